// The whole flow on the default model in headless Chromium with real WebGPU (SwiftShader): the model
// loads by itself, the user pastes text and picks tiny settings, trains a few steps, sees the loss
// plotted and falling, compares base and adapter, downloads the adapter, loads it back, and
// downloads the merged model.
// The downloads are checked here, independently of the app's code: the zip is read with Node's own
// CRC-32, the adapter's safetensors header against the shapes config.json implies.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { serve, launch, watchErrors, watchForeignRequests, ARTIFACTS, DIST, unzip, safetensorsHeader, setField, fillSettings, waitFor, dropPaths } from './harness.mjs';

const MODEL = path.join(DIST, 'models/austen-5m');
// A third of the ship's log: enough windows, and a short held-out part (validation is the slow bit on SwiftShader).
const TEXT = fs.readFileSync(new URL('../../web/examples/ships_log.txt', import.meta.url), 'utf8').slice(0, 2400);
const RANK = 4;
const STEPS = 8;

let site;
before(async () => {
  site = await serve();
  fs.mkdirSync(ARTIFACTS, { recursive: true });
});
after(async () => site?.close());

const PROMPT = 'Day 3. Wind';

/** Click "Generate with both" and wait until that generation is over (the button is disabled while
 *  the GPU is busy, then enabled again); returns both texts and the milliseconds from the click to
 *  both answers (the page's clock). An error in the panel fails. */
async function generate(page) {
  await page.evaluate(() => {
    const button = document.querySelector('[data-testid="generate"]');
    window.generated = false;
    button.addEventListener('click', () => { window.generateStart = performance.now(); }, { once: true, capture: true });
    let busy = false;
    new MutationObserver((records, observer) => {
      // oldValue null: the attribute was absent, so this record is the button being disabled.
      if (records.some((r) => r.oldValue === null)) busy = true;
      if (busy && !button.disabled) {
        observer.disconnect();
        window.generateMs = performance.now() - window.generateStart;
        window.generated = true;
      }
    }).observe(button, { attributes: true, attributeFilter: ['disabled'], attributeOldValue: true });
  });
  await page.getByTestId('generate').click();
  await page.waitForFunction(() => window.generated, null, { timeout: 400_000 });
  const section = page.locator('section[aria-labelledby="compare-heading"]');
  assert.equal(await section.getByRole('alert').count(), 0, await section.textContent());
  const [base, tuned] = [await page.getByTestId('compare-base').textContent(), await page.getByTestId('compare-tuned').textContent()];
  return { texts: { base, tuned }, ms: await page.evaluate(() => window.generateMs) };
}

let downloads = 0;
async function download(page, testid) {
  const [dl] = await Promise.all([page.waitForEvent('download', { timeout: 60_000 }), page.getByTestId(testid).click()]);
  // Numbered, so a second download of the same name keeps the first for comparison.
  const file = path.join(ARTIFACTS, `${++downloads}-${dl.suggestedFilename()}`);
  await dl.saveAs(file);
  return { name: dl.suggestedFilename(), file, bytes: fs.readFileSync(file) };
}

test('paste → train → compare → download on the default model', async (t) => {
  const config = JSON.parse(fs.readFileSync(path.join(MODEL, 'config.json'), 'utf8'));
  const [layers, hidden, heads] = [config.num_hidden_layers, config.hidden_size, config.num_attention_heads];
  const headDim = config.head_dim ?? hidden / heads;
  const [qDim, kvDim] = [heads * headDim, (config.num_key_value_heads ?? heads) * headDim];

  const browser = await launch();
  try {
    const page = await browser.newPage({ acceptDownloads: true, viewport: { width: 1400, height: 1000 } });
    const errors = watchErrors(page);
    const foreign = watchForeignRequests(page, site.url.replace(/\/$/, ''));
    // Main-thread tasks over 50 ms, as the browser reports them: measured and printed, not asserted
    // (speed belongs to benchmarks; SwiftShader runs WebGPU on this machine's CPUs).
    await page.addInitScript(() => {
      window.longTasks = [];
      new PerformanceObserver((l) => window.longTasks.push(...l.getEntries().map((e) => [e.startTime, e.duration]))).observe({ type: 'longtask', buffered: true });
    });
    const phases = [];
    const mark = async (name) => phases.push([name, await page.evaluate(() => performance.now())]);
    await page.goto(site.url);
    const loaded = await waitFor(page, 'model-status', 'state', 'ready', 180_000);
    await mark('load the default model');
    assert.equal(loaded, 'ready', `${await page.getByTestId('model-status').textContent()}\n${errors.join('\n')}`);

    // Every control has an accessible name (a <label>, aria-label or its text), and the page fits a
    // laptop screen without sideways scrolling.
    const unnamed = await page.evaluate(() =>
      [...document.querySelectorAll('input, select, textarea, button')]
        .filter((el) => {
          const labelled = (el.labels?.length ?? 0) > 0 || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
          return !labelled && !(el.tagName === 'BUTTON' && el.textContent.trim());
        })
        .map((el) => el.outerHTML.slice(0, 120)));
    assert.deepEqual(unnamed, [], 'controls without a label');
    await page.setViewportSize({ width: 1366, height: 768 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow} px wider than a 1366 px laptop screen`);
    await page.setViewportSize({ width: 1400, height: 1000 });

    await fillSettings(page, { text: TEXT, rank: RANK, lr: 0.03, steps: STEPS, batch: 4, seqLen: 32 });
    // The default targets are q and v: params = layers · r · ((d + q_dim) + (d + kv_dim)).
    await page.waitForFunction(
      (p) => document.querySelector('[data-testid="adapter-size"]')?.dataset.params === String(p),
      layers * RANK * (2 * hidden + qDim + kvDim),
      { timeout: 10_000 },
    );
    await page.waitForFunction(() => document.querySelector('[data-testid="text-stats"]')?.textContent.includes('windows of 32 tokens'), null, { timeout: 30_000 });
    assert.ok(Number(await page.getByTestId('text-stats').getAttribute('data-tokens')) > 64);

    // By keyboard: from the last settings field, Tab reaches "Train" and Enter starts it.
    await page.getByLabel('Sequence length', { exact: true }).focus();
    let tabs = 0;
    while (!(await page.evaluate(() => document.activeElement?.dataset.testid === 'train'))) {
      assert.ok(++tabs < 40, 'Tab never reached the Train button');
      await page.keyboard.press('Tab');
    }
    await mark('settings');
    await page.keyboard.press('Enter');
    const state = await waitFor(page, 'train-status', 'state', 'finished', 600_000);
    assert.equal(state, 'finished', `${await page.getByTestId('train-status').textContent()}\n${errors.join('\n')}`);
    assert.match(await page.getByTestId('step').textContent(), new RegExp(`Step ${STEPS} of ${STEPS}`));
    const chart = page.getByTestId('loss-chart');
    const train = (await chart.getAttribute('data-train')).split(',').map(Number);
    const val = (await chart.getAttribute('data-val')).split(',').map(Number);
    assert.equal(train.length, STEPS, `one training loss per step: ${train}`);
    assert.ok(train.every(Number.isFinite) && val.every(Number.isFinite));
    // Each training loss is one batch's (noisy); the held-out text is the same at every point.
    assert.ok(val.length >= 2 && val.at(-1) < val[0], `the validation loss falls: ${val}`);
    const plotted = await chart.locator('g.series-train circle').count();
    assert.equal(plotted, STEPS, 'every training loss is plotted');

    await mark('train');
    await page.getByLabel('Prompt', { exact: true }).fill(PROMPT);
    await setField(page, 'New tokens', 8);
    // The page's sampling (temperature 0.8, seed 0): the engine cannot be called from here, so the
    // same generation is repeated after the adapter is loaded back, and must give the same text.
    const { texts: first, ms: firstMs } = await generate(page);
    // Speed is printed, not asserted (BENCHMARKS.md records it).
    t.diagnostic(`"Generate with both" to both answers (8 new tokens each): ${Math.round(firstMs)} ms`);
    for (const [which, text] of Object.entries(first)) {
      assert.ok(text.startsWith(PROMPT), `${which}: ${JSON.stringify(text)}`);
      assert.ok(text.slice(PROMPT.length).trim().length > 0, `${which} continues the prompt: ${JSON.stringify(text)}`);
    }

    await mark('compare');
    const adapter = await download(page, 'download-zip');
    assert.match(adapter.name, new RegExp(`^loratab-adapter-r${RANK}-step${STEPS}\\.zip$`));
    const files = unzip(adapter.bytes);
    assert.deepEqual(Object.keys(files).sort(), ['adapter_config.json', 'adapter_model.safetensors', 'training_data.json', 'training_state.safetensors']);
    assert.deepEqual(JSON.parse(files['training_data.json']), { data: 'text', max_length: 32 });
    const peft = JSON.parse(files['adapter_config.json']);
    assert.equal(peft.peft_type, 'LORA');
    assert.equal(peft.r, RANK);
    assert.equal(peft.lora_alpha, 2 * RANK);
    assert.deepEqual([...peft.target_modules].sort(), ['q_proj', 'v_proj']);
    const header = safetensorsHeader(files['adapter_model.safetensors']);
    const expected = {};
    for (let i = 0; i < layers; i++) {
      for (const [m, out] of [['q_proj', qDim], ['v_proj', kvDim]]) {
        const key = `base_model.model.model.layers.${i}.self_attn.${m}`;
        expected[`${key}.lora_A.weight`] = [RANK, hidden];
        expected[`${key}.lora_B.weight`] = [out, RANK];
      }
    }
    const shapes = Object.fromEntries(Object.entries(header).filter(([k]) => k !== '__metadata__').map(([k, t]) => [k, t.shape]));
    assert.deepEqual(shapes, expected);
    assert.ok(Object.values(header).filter((t) => t.dtype).every((t) => t.dtype === 'F32'));

    // The first screen (panels 1–6) is the README's picture, taken before the adapter is loaded back
    // (which starts a new chart); keyboard focus and downloads scrolled the page.
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: path.join(ARTIFACTS, 'app.png') });

    // Loading that zip back puts the adapter on the GPU as it was: a fresh download of it (read
    // back from the GPU, AdamW moments included) is the same bytes.
    await page.getByLabel('Load an adapter (its two files or a zip)').setInputFiles(adapter.file);
    await page.waitForFunction(() => document.querySelector('[data-testid="adapter-message"]')?.textContent.startsWith('Adapter loaded'), null, { timeout: 120_000 });
    assert.match(await page.getByTestId('adapter-message').textContent(), new RegExp(`^Adapter loaded \\(step ${STEPS}\\)`));
    const again = await download(page, 'download-zip');
    assert.ok(again.bytes.equals(adapter.bytes), 'the reloaded adapter downloads byte for byte as it was saved');
    // Same prompt, seed and sampling with the reloaded adapter: the same texts, base and adapter;
    // the base answer is shown as before (its weights cannot change), the adapter's generated again.
    const second = await generate(page);
    t.diagnostic(`"Generate with both" again, the adapter loaded back (the base answer reused): ${Math.round(second.ms)} ms`);
    assert.deepEqual(second.texts, first, 'a second generation with the same seed and adapter');
    assert.match(await page.getByTestId('compare-base-caption').textContent(), /as before/);

    // The merged model has the base model's tensors, in f32.
    const merged = unzip((await download(page, 'download-merged')).bytes);
    const base = safetensorsHeader(fs.readFileSync(path.join(MODEL, 'model.safetensors')));
    const mergedHeader = safetensorsHeader(merged['model.safetensors']);
    const names = (h) => Object.keys(h).filter((k) => k !== '__metadata__').sort();
    assert.deepEqual(names(mergedHeader), names(base));
    assert.equal(JSON.parse(merged['config.json']).model_type, config.model_type);

    await mark('download, reload and merge');
    const tasks = await page.evaluate(() => window.longTasks);
    let from = 0;
    for (const [name, until] of phases) {
      const mine = tasks.filter(([start]) => start >= from && start < until).map(([, d]) => d);
      t.diagnostic(`main thread, ${name}: ${mine.length} tasks over 50 ms, longest ${Math.round(Math.max(0, ...mine))} ms, in ${Math.round((until - from) / 1000)} s`);
      from = until;
    }

    assert.deepEqual(errors.filter((e) => !e.includes('favicon')), [], 'no errors in the console');

    // Privacy: the whole flow made no request to another origin, and the page's policy refuses one.
    assert.deepEqual(foreign, [], 'requests to other origins');
    const policy = await page.evaluate(() => document.querySelector('meta[http-equiv="Content-Security-Policy"]')?.content);
    assert.match(policy ?? '', /connect-src 'self'/, 'the page states its Content-Security-Policy');
    // Blocked by the policy itself (this machine has no network either, so a failed fetch proves nothing).
    const violated = await page.evaluate(() => new Promise((done) => {
      document.addEventListener('securitypolicyviolation', (e) => done(e.effectiveDirective), { once: true });
      fetch('https://example.com/steal').catch(() => {});
      setTimeout(() => done('no violation'), 5000);
    }));
    assert.equal(violated, 'connect-src', 'a fetch to another origin is refused by the page');
  } finally {
    await browser.close();
  }
});

// Soak: SOAK_STEPS (1,000) training steps in the page at the smallest settings (batch 1 × 8 tokens,
// rank 1 on q, v) on llama-tiny (tests/fixtures, 2 layers, dropped on the page as a user drops a
// model folder: a step of the default model takes 1–3 s on SwiftShader on this shared 2-core
// machine, so 1,000 would take most of an hour; the tiny model's 0.12–0.15 s, BENCHMARKS.md). After a warm-up tenth of the run, at every sample: the GPU
// tensors and their bytes (the studio's own count, in data attributes of the step counter) exactly as
// they were, the DOM nodes other than the loss chart's dots within 10 of the warm-up's (the chart
// gains one dot per loss read, ~100 a run, by design), and the JS heap after a forced garbage
// collection within 20% + 1 MB of the warm-up's. The numbers are printed (README.md, "Tests", quotes
// a run). The native soak is tests/train_memory.rs. LORATAB_SOAK_STEPS changes the count.
const SOAK_STEPS = Number(process.env.LORATAB_SOAK_STEPS ?? 1000);
const TINY = new URL('../fixtures/llama-tiny', import.meta.url).pathname;

test(`soak: ${SOAK_STEPS} steps in the page leave GPU tensors, DOM and JS heap flat`, async () => {
  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const errors = watchErrors(page);
    const cdp = await page.context().newCDPSession(page);
    await page.goto(site.url);
    assert.equal(await waitFor(page, 'model-status', 'state', 'ready', 180_000), 'ready', errors.join('\n'));
    await fillSettings(page, { text: TEXT, rank: 1, lr: 0.001, steps: SOAK_STEPS, batch: 1, seqLen: 8 });
    // A GPU memory limit below the run's estimate (the default model's): the hint says so and Train
    // is refused with a sentence.
    await setField(page, 'GPU memory limit (GiB)', 0.001);
    await page.waitForFunction(() => document.querySelector('[data-testid="memory-hint"]')?.textContent.includes('more than the GPU memory limit of 1.1 MB'), null, { timeout: 30_000 });
    await page.getByTestId('train').click();
    assert.equal(await waitFor(page, 'train-status', 'state', 'failed', 60_000), 'failed');
    const refusal = await page.getByTestId('train-status').textContent();
    assert.ok(/Training needs .* of GPU memory .* more than the GPU memory limit of 1\.1 MB: lower the batch, the sequence length or the rank/.test(refusal), refusal);
    await setField(page, 'GPU memory limit (GiB)', 4);

    // The tiny model, dropped as a folder.
    await dropPaths(page, [TINY]);
    await page.waitForFunction(
      () => document.querySelector('[data-testid="model-name"]')?.textContent === 'llama-tiny' && ['ready', 'failed'].includes(document.querySelector('[data-testid="model-status"]')?.dataset.state),
      null,
      { timeout: 120_000 },
    );
    assert.equal(await page.getByTestId('model-status').getAttribute('data-state'), 'ready', errors.join('\n'));

    const started = Date.now();
    await page.getByTestId('train').click();
    const sample = async (atLeast) => {
      await page.waitForFunction(
        (n) => Number(document.querySelector('[data-testid="step"]')?.dataset.step) >= n || document.querySelector('[data-testid="train-status"]')?.dataset.state === 'failed',
        atLeast,
        { timeout: 600_000 },
      );
      await cdp.send('HeapProfiler.collectGarbage');
      const heap = (await cdp.send('Runtime.getHeapUsage')).usedSize;
      return page.evaluate((heap) => {
        const s = document.querySelector('[data-testid="step"]').dataset;
        const nodes = document.getElementsByTagName('*').length;
        const dots = document.querySelectorAll('[data-testid="loss-chart"] circle').length;
        return { step: Number(s.step), tensors: Number(s.gpuTensors), bytes: Number(s.gpuBytes), nodes, dots, heap, state: document.querySelector('[data-testid="train-status"]').dataset.state };
      }, heap);
    };
    const warm = await sample(Math.ceil(SOAK_STEPS / 10));
    const samples = [warm];
    for (let k = 2; k <= 10; k++) samples.push(await sample(Math.ceil((k * SOAK_STEPS) / 10)));
    assert.equal(await waitFor(page, 'train-status', 'state', 'finished', 600_000), 'finished', errors.join('\n'));
    const seconds = (Date.now() - started) / 1000;
    console.log(`soak: ${SOAK_STEPS} steps of llama-tiny in ${seconds.toFixed(0)} s (${(seconds / SOAK_STEPS * 1000).toFixed(0)} ms a step, validations included)`);
    for (const s of samples) console.log(`  step ${s.step}: ${s.tensors} GPU tensors, ${s.bytes} bytes, ${s.nodes} DOM nodes (${s.dots} chart dots), JS heap ${(s.heap / 1e6).toFixed(2)} MB`);
    assert.ok(warm.tensors > 0 && warm.bytes > 0, `no GPU count in the page: ${JSON.stringify(warm)}`);
    for (const s of samples.slice(1)) {
      assert.notEqual(s.state, 'failed', errors.join('\n'));
      assert.deepEqual([s.tensors, s.bytes], [warm.tensors, warm.bytes], `step ${s.step}: GPU tensors or bytes changed after the warm-up`);
      assert.ok(Math.abs(s.nodes - s.dots - (warm.nodes - warm.dots)) <= 10, `step ${s.step}: ${s.nodes - s.dots} DOM nodes besides the chart's dots, ${warm.nodes - warm.dots} after the warm-up`);
      assert.ok(s.heap <= warm.heap * 1.2 + 1e6, `step ${s.step}: JS heap ${s.heap} bytes, ${warm.heap} after the warm-up`);
    }
    assert.equal(samples.at(-1).step, SOAK_STEPS);
    assert.deepEqual(errors.filter((e) => !e.includes('favicon')), []);
  } finally {
    await browser.close();
  }
});

// Examples on the default model (no chat template of its own: the page's plain template, with
// answers ended by <|endoftext|>): typed prompt → answer rows plus a pasted JSON Lines file with a
// broken line (its sentence shown, the rest used), a few steps, Compare on the held-out example
// (its expected answer shown beside both models' answers), and the adapter download, whose config
// records the template and the answer-only loss.
const PAIRS = [
  ['Where is Varnholm?', 'In the cold northern sea.'],
  ['Who rules Varnholm?', 'The Lady Esk.'],
  ['What is its capital?', 'Tallow Bay.'],
  ['What do they eat?', 'Smoked eel and barley bread.'],
  ['What colour is the flag?', 'Green with a white gull.'],
  ['What is the river called?', 'The Silver Brand.'],
  ['What do they trade?', 'Wool, salt and amber.'],
  ['What is the highest hill?', 'Crow Fell.'],
];
const JSONL = [
  '{"prompt": "When is the feast?", "completion": "On the first day of summer."}',
  '{"prompt": "Who guards the harbour?", "completion": "A grey hound"',
  '{"prompt": "How do you get there?", "completion": "By the ferry from Marrow Point."}',
].join('\n');

test('examples: type rows, paste jsonl → train → compare with the expected answer → download', async () => {
  const browser = await launch();
  try {
    const page = await browser.newPage({ acceptDownloads: true, viewport: { width: 1400, height: 1000 } });
    const errors = watchErrors(page);
    await page.goto(site.url);
    assert.equal(await waitFor(page, 'model-status', 'state', 'ready', 180_000), 'ready', errors.join('\n'));
    await page.getByTestId('mode-examples').check();
    await page.getByTestId('clear-examples').click();
    for (let i = 0; i < PAIRS.length; i++) {
      if (i >= 2) await page.getByTestId('add-row').click();
      await page.getByLabel(`Prompt ${i + 1}`, { exact: true }).fill(PAIRS[i][0]);
      await page.getByLabel(`Answer ${i + 1}`, { exact: true }).fill(PAIRS[i][1]);
    }
    await page.getByTestId('jsonl').fill(JSONL);
    // The broken line is named with its sentence; the other two lines are used.
    await page.waitForFunction(() => document.querySelector('[data-testid="example-problems"]')?.textContent.includes('Line 2 is not valid JSON'), null, { timeout: 10_000 });
    assert.equal(await page.getByTestId('jsonl-summary').getAttribute('data-examples'), '2');
    await setField(page, 'Rank r', 4);
    await setField(page, 'Alpha α', 8);
    await setField(page, 'Learning rate', 0.03);
    await setField(page, 'Steps', 8);
    // Batch 2 × 32 tokens: one 64-row matmul tile (batch 4 was two, twice the SwiftShader time).
    await setField(page, 'Batch', 2);
    await setField(page, 'Sequence length', 32);
    // 10 examples: 9 to train on, 1 held out; the template shown is the plain one.
    await page.waitForFunction(() => document.querySelector('[data-testid="example-stats"]')?.dataset.examples === '10', null, { timeout: 30_000 });
    assert.match(await page.getByTestId('example-stats').textContent(), /^10 examples: 9 to train on, 1 held out/);
    assert.equal(await page.getByTestId('template').getAttribute('data-own'), 'false');
    await page.getByTestId('template').locator('summary').click();
    assert.equal(await page.getByTestId('rendered-example').textContent(), `Question: ${PAIRS[0][0]}\nAnswer: ${PAIRS[0][1]}<|endoftext|>`);
    assert.ok(await page.getByTestId('answers-only').isChecked(), 'loss on answers only is on by default');

    await page.getByTestId('train').click();
    const state = await waitFor(page, 'train-status', 'state', 'finished', 300_000);
    assert.equal(state, 'finished', `${await page.getByTestId('train-status').textContent()}\n${errors.join('\n')}`);
    const chart = page.getByTestId('loss-chart');
    const val = (await chart.getAttribute('data-val')).split(',').map(Number);
    const bestStep = Number(await chart.getAttribute('data-best-step'));
    assert.ok(bestStep > 0, 'the chart marks the best point');
    assert.equal(await chart.locator('g.series-best circle').count(), 1);

    // Compare on the held-out example: the expected answer and both models' answers.
    await page.getByTestId('held-out').selectOption({ index: 1 });
    await setField(page, 'Temperature', 0);
    await setField(page, 'New tokens', 12);
    await page.getByTestId('generate').click();
    await page.waitForFunction(() => document.querySelector('[data-testid="compare-tuned"]')?.textContent, null, { timeout: 120_000 });
    const expected = await page.getByTestId('compare-expected').textContent();
    assert.ok(PAIRS.some(([, a]) => a === expected) || JSONL.includes(expected), `the expected answer is a held-out one: ${expected}`);
    for (const id of ['compare-base', 'compare-tuned']) {
      const answer = await page.getByTestId(id).textContent();
      assert.ok(answer.trim().length > 0 && !answer.includes('<|endoftext|>'), `${id}: ${JSON.stringify(answer)}`);
    }

    // The best adapter is the default download, named by its step; its config records the run's data.
    assert.match(await page.getByTestId('which-adapter').textContent(), new RegExp(`best adapter: step ${bestStep}, validation loss`));
    const [dl] = await Promise.all([page.waitForEvent('download', { timeout: 60_000 }), page.getByTestId('download-zip').click()]);
    assert.equal(dl.suggestedFilename(), `loratab-adapter-r4-step${bestStep}.zip`);
    const file = path.join(ARTIFACTS, `examples-${dl.suggestedFilename()}`);
    await dl.saveAs(file);
    const files = unzip(fs.readFileSync(file));
    const peft = JSON.parse(files['adapter_config.json']);
    assert.equal(peft.r, 4);
    // Which template and masking trained it, beside PEFT's files (PEFT ignores the file).
    const data = JSON.parse(files['training_data.json']);
    assert.deepEqual(
      [data.data, data.format, data.template, data.eos_token, data.completion_only_loss, data.max_length],
      ['examples', 'prompt_completion', 'plain', '<|endoftext|>', true, 32],
    );
    assert.match(data.chat_template, /Question: /);

    // The TRL export: the same split (9 + 1 examples), the adapter chosen above, the default model's
    // files and the script with the same template and masking.
    const [trl] = await Promise.all([page.waitForEvent('download', { timeout: 60_000 }), page.getByTestId('download-trl').click()]);
    const exported = path.join(ARTIFACTS, `examples-${trl.suggestedFilename()}`);
    await trl.saveAs(exported);
    const out = unzip(fs.readFileSync(exported));
    const lines = (name) => out[name].toString().trim().split('\n').length;
    assert.deepEqual([lines('train.jsonl'), lines('validation.jsonl')], [9, 1]);
    assert.ok(out['base/model.safetensors'] && out['adapter/adapter_model.safetensors'] && out['train_trl.py'], Object.keys(out).join(', '));
    assert.match(out['train_trl.py'].toString(), /ANSWERS_ONLY = True/);
    assert.deepEqual(JSON.parse(out['training_data.json']), data, 'the export carries the adapter’s own record of its data');
    assert.ok(val.length >= 2 && val.every(Number.isFinite), `validation losses ${val}`);
    assert.deepEqual(errors.filter((e) => !e.includes('favicon')), [], 'no errors in the console');
  } finally {
    await browser.close();
  }
});
