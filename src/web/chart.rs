//! A small SVG line chart (no library): the training panel's loss curves and the rank demo's
//! validation loss against rank.

use leptos::prelude::*;

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// CSS class giving the colour (`series-train`, `series-val`, …).
    pub class: &'static str,
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 600.0;
const H: f64 = 260.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 42.0;

fn span(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return None;
    }
    // A flat line still needs a visible range.
    let pad = if hi - lo < 1e-9 { 0.5 * lo.abs().max(1e-3) } else { 0.05 * (hi - lo) };
    Some((lo - pad, hi + pad))
}

/// `series` plotted against shared axes. `x_ticks` (value, label) replace the numeric x ticks;
/// `log2_x` spaces x by log2 (ranks 1, 2, 4, … evenly).
#[component]
pub fn LineChart(
    #[prop(into)] series: Signal<Vec<Series>>,
    title: &'static str,
    x_label: &'static str,
    y_label: &'static str,
    #[prop(optional)] log2_x: bool,
    #[prop(optional, into)] x_ticks: Option<Signal<Vec<(f64, String)>>>,
) -> impl IntoView {
    let fx = move |x: f64| if log2_x { x.max(1e-9).log2() } else { x };
    let plot = move || {
        let all = series.get();
        let xs = span(all.iter().flat_map(|s| s.points.iter().map(|p| fx(p.0))));
        let ys = span(all.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
        let (Some((x0, x1)), Some((y0, y1))) = (xs, ys) else {
            return view! { <text x={W / 2.0} y={H / 2.0} text-anchor="middle" class="chart-empty">"No points yet"</text> }.into_any();
        };
        let px = move |x: f64| LEFT + (fx(x) - x0) / (x1 - x0) * (W - LEFT - RIGHT);
        let py = move |y: f64| TOP + (y1 - y) / (y1 - y0) * (H - TOP - BOTTOM);
        let y_ticks: Vec<f64> = (0..5).map(|i| y0 + (y1 - y0) * (0.05 + 0.9 * i as f64 / 4.0)).collect();
        let xt: Vec<(f64, String)> = match x_ticks.map(|t| t.get()) {
            Some(t) => t,
            None => {
                let (a, b) = (x0 + 0.05 * (x1 - x0), x1 - 0.05 * (x1 - x0));
                (0..5).map(|i| a + (b - a) * i as f64 / 4.0).map(|x| (x, format!("{x:.0}"))).collect()
            }
        };
        let lines = all
            .into_iter()
            .map(|s| {
                let pts: String = s.points.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| format!("{:.1},{:.1} ", px(x), py(y))).collect();
                let dots = s
                    .points
                    .iter()
                    .filter(|p| p.1.is_finite())
                    .map(|&(x, y)| view! { <circle cx={px(x)} cy={py(y)} r="2.5"/> })
                    .collect_view();
                view! { <g class=s.class><polyline points=pts fill="none"/>{dots}</g> }
            })
            .collect_view();
        view! {
            <g class="axes">
                <line x1=LEFT y1={H - BOTTOM} x2={W - RIGHT} y2={H - BOTTOM}/>
                <line x1=LEFT y1=TOP x2=LEFT y2={H - BOTTOM}/>
                {y_ticks.into_iter().map(|y| view! {
                    <line class="grid" x1=LEFT y1={py(y)} x2={W - RIGHT} y2={py(y)}/>
                    <text x={LEFT - 6.0} y={py(y) + 4.0} text-anchor="end">{format!("{y:.2}")}</text>
                }).collect_view()}
                {xt.into_iter().map(|(x, label)| view! {
                    <text x={px(x)} y={H - BOTTOM + 16.0} text-anchor="middle">{label}</text>
                }).collect_view()}
                <text x={(LEFT + W - RIGHT) / 2.0} y={H - 6.0} text-anchor="middle" class="axis-label">{x_label}</text>
                <text x="14" y={(TOP + H - BOTTOM) / 2.0} text-anchor="middle" class="axis-label"
                    transform=format!("rotate(-90 14 {})", (TOP + H - BOTTOM) / 2.0)>{y_label}</text>
            </g>
            {lines}
        }
        .into_any()
    };
    let legend = move || {
        series
            .get()
            .into_iter()
            .map(|s| view! { <li><span class=format!("swatch {}", s.class) aria-hidden="true"></span>{s.name}</li> })
            .collect_view()
    };
    view! {
        <svg class="chart" viewBox=format!("0 0 {W} {H}") role="img" aria-label=title>
            {plot}
        </svg>
        <ul class="legend">{legend}</ul>
    }
}
