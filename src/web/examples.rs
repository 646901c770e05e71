//! Built-in example texts (public domain, or written for loratab), so the page works with no typing.

pub struct Example {
    pub title: &'static str,
    pub text: &'static str,
}

pub static EXAMPLES: [Example; 3] = [
    Example { title: "A ship's log (regular, learns fast)", text: include_str!("../../web/examples/ships_log.txt") },
    Example { title: "Poe, The Raven (1845)", text: include_str!("../../web/examples/raven.txt") },
    Example { title: "Carroll, Alice's Adventures in Wonderland (1865)", text: include_str!("../../web/examples/alice.txt") },
];

/// A built-in set of prompt → answer pairs about a made-up island (JSON Lines), for the Examples
/// switch: nothing the default model could have read, so what it answers after training was taught.
pub static EXAMPLE_PAIRS: Example = Example { title: "Questions about a made-up island (12 pairs)", text: include_str!("../../web/examples/varnholm.jsonl") };
