// Compact frozen weights in the page, in headless Chromium with real WebGPU (SwiftShader):
// - the "Frozen weights" select on the default model: q8_0 refused with a sentence (its MLP rows are
//   not whole blocks), f32 loaded, its GPU bytes against the count its config.json implies;
// - SmolLM2-135M-Instruct, the Q4_1 GGUF that ./dev setup puts next to the page: first as if it
//   were absent (a sentence, the loaded model stays), then a truncated copy picked as a file (a
//   sentence, the model stays), then the real file: its frozen-weight bytes against the GGUF's own
//   tensor table (read here, independently of the app), two training steps at small settings, the
//   GPU memory the run allocated against the estimate the page showed, and the adapter download
//   (adapter_config.json names the GGUF file; shapes from the GGUF's metadata).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { serve, launch, watchErrors, ARTIFACTS, DIST, unzip, safetensorsHeader, fillSettings, waitFor } from './harness.mjs';

const GGUF_NAME = 'smollm2-135m-instruct-q4_1.gguf';
const GGUF = path.join(DIST, 'models', GGUF_NAME);
const DEFAULT = path.join(DIST, 'models/austen-5m');
// About 80 SmolLM2 tokens: training windows of 8 and one held out (see fitText). 8 rows take the
// matrix–vector kernels (no 64-row tile padding): ~20 s a step on SwiftShader instead of ~200 s at 16.
const TEXT = fs.readFileSync(new URL('../../web/examples/ships_log.txt', import.meta.url), 'utf8').slice(0, 240);
const [RANK, STEPS, SEQ] = [2, 2, 8];

/** GGUF's metadata and tensor table (types and shapes; the data section is not read). */
function readGguf(buf) {
  let at = 0;
  const u32 = () => { at += 4; return buf.readUInt32LE(at - 4); };
  const u64 = () => { at += 8; return Number(buf.readBigUInt64LE(at - 8)); };
  const str = () => { const n = u64(); at += n; return buf.toString('utf8', at - n, at); };
  const SIZES = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
  const value = (type) => {
    if (type === 8) return str();
    if (type === 9) {
      const [inner, n] = [u32(), u64()];
      const out = [];
      for (let i = 0; i < n; i++) out.push(value(inner));
      return out;
    }
    const size = SIZES[type];
    assert.ok(size, `GGUF value type ${type}`);
    const v = { 0: () => buf.readUInt8(at), 1: () => buf.readInt8(at), 2: () => buf.readUInt16LE(at), 3: () => buf.readInt16LE(at),
      4: () => buf.readUInt32LE(at), 5: () => buf.readInt32LE(at), 6: () => buf.readFloatLE(at), 7: () => buf.readUInt8(at) !== 0,
      10: () => Number(buf.readBigUInt64LE(at)), 11: () => Number(buf.readBigInt64LE(at)), 12: () => buf.readDoubleLE(at) }[type]();
    at += size;
    return v;
  };
  assert.equal(buf.toString('latin1', 0, 4), 'GGUF');
  at = 4;
  u32(); // version
  const [tensors, kvs] = [u64(), u64()];
  const meta = {};
  for (let i = 0; i < kvs; i++) {
    const key = str();
    meta[key] = value(u32());
  }
  const table = [];
  for (let i = 0; i < tensors; i++) {
    const name = str();
    const dims = Array.from({ length: u32() }, u64);
    const type = u32();
    u64(); // offset
    table.push({ name, n: dims.reduce((a, b) => a * b, 1), type });
  }
  return { meta, tensors: table };
}

/** GPU bytes of n values as the app stores them: ggml blocks of 32 repacked into whole 32-bit words
 *  (Q8_0: 34 bytes → 9 words; Q4_0/Q4_1: 18/20 bytes → 5 words), 16-bit pairs in one word. */
function gpuBytes(format, n) {
  const [values, words] = { F32: [1, 1], F16: [2, 1], BF16: [2, 1], Q8_0: [32, 9], Q4_0: [32, 5], Q4_1: [32, 5] }[format];
  return Math.ceil(n / values) * words * 4;
}
const GGML_TYPES = { 0: 'F32', 1: 'F16', 2: 'Q4_0', 3: 'Q4_1', 8: 'Q8_0', 30: 'BF16' };

let site;
before(async () => {
  site = await serve();
  fs.mkdirSync(ARTIFACTS, { recursive: true });
});
after(async () => site?.close());

/** Drop words from the end of the text until its token count is a multiple of `seq` (or one more):
 *  then the held-out span is one window and validation one forward pass instead of two (each is tens
 *  of seconds of SwiftShader for a 135M model). Only the time depends on this, not what is checked. */
async function fitText(page, text, seq) {
  const tokens = async () => Number(await page.getByTestId('text-stats').getAttribute('data-tokens'));
  let words = text.split(' ');
  for (let i = 0; i < 40; i++) {
    const candidate = words.join(' ');
    const before = await tokens();
    await page.getByLabel('Training text').fill(candidate);
    // The page counts 250 ms after the last change; the count may also stay the same.
    await page.waitForFunction((b) => document.querySelector('[data-testid="text-stats"]')?.dataset.tokens !== String(b), before, { timeout: 1500 }).catch(() => {});
    if ((await tokens()) % seq <= 1) return candidate;
    words = words.slice(0, -1);
  }
  return text;
}

const status = async (page) => ({
  state: await page.getByTestId('model-status').getAttribute('data-state'),
  text: await page.getByTestId('model-status').textContent(),
});

/** Wait until the model status leaves `before` (a text) for ready or failed. */
async function settled(page, before, timeout) {
  await page.waitForFunction(
    (b) => {
      const s = document.querySelector('[data-testid="model-status"]');
      return (s?.dataset.state === 'ready' || s?.dataset.state === 'failed') && s.textContent !== b;
    },
    before,
    { timeout },
  );
  return status(page);
}

test('frozen weights: the format select; SmolLM2 Q4_1 GGUF loads, trains, and its adapter names the file', async (t) => {
  // ./dev setup downloads it: its absence is a broken setup, not a reason to skip.
  assert.ok(fs.existsSync(GGUF), `${GGUF} is missing: run ./dev setup (it downloads ${GGUF_NAME}), then trunk build`);
  const gguf = readGguf(fs.readFileSync(GGUF));
  const started = Date.now();
  const browser = await launch();
  try {
    const page = await browser.newPage({ acceptDownloads: true, viewport: { width: 1400, height: 1000 } });
    const errors = watchErrors(page);
    await page.goto(site.url);
    assert.equal(await waitFor(page, 'model-status', 'state', 'ready', 180_000), 'ready', `${(await status(page)).text}\n${errors.join('\n')}`);

    // The default model (f16 in its file): q8_0 cannot hold its 688-wide MLP rows (a sentence; the
    // model stays), f32 can: then its GPU bytes are 4 per parameter, counted from config.json.
    const c = JSON.parse(fs.readFileSync(path.join(DEFAULT, 'config.json'), 'utf8'));
    const [d, f, v, layers] = [c.hidden_size, c.intermediate_size, c.vocab_size, c.num_hidden_layers];
    const headDim = c.head_dim ?? d / c.num_attention_heads;
    const [qd, kvd] = [c.num_attention_heads * headDim, (c.num_key_value_heads ?? c.num_attention_heads) * headDim];
    const matrices = [v * d, ...Array(layers).fill([d * qd, d * kvd, d * kvd, qd * d, d * f, d * f, f * d]).flat()];
    assert.ok(c.tie_word_embeddings, 'austen-5m ties its head to the embedding');
    assert.notEqual(f % 32, 0, 'austen-5m has MLP rows that are not whole q8_0 blocks');
    await page.getByTestId('frozen-format').selectOption('q8_0');
    let before = (await status(page)).text;
    await page.getByRole('button', { name: 'Reload the default model' }).click();
    let s = await settled(page, before, 120_000);
    assert.equal(s.state, 'failed');
    assert.match(s.text, new RegExp(`^Could not load austen-5m: .*${f} values, not a multiple of q8_0's block of 32; choose “as stored”, f16 or f32 under Frozen weights\\. The previous model stays loaded\\.$`, 's'));
    assert.equal(await page.getByTestId('model-name').textContent(), 'austen-5m');
    await page.getByTestId('frozen-format').selectOption('f32');
    before = s.text;
    await page.getByRole('button', { name: 'Reload the default model' }).click();
    s = await settled(page, before, 120_000);
    assert.equal(s.state, 'ready', s.text);
    assert.equal(await page.getByTestId('weight-formats').textContent(), `f32 ×${matrices.length} (converted to f32 at load)`);
    const f32 = 4 * (matrices.reduce((a, n) => a + n, 0) + (2 * layers + 1) * d);
    assert.equal(Number(await page.getByTestId('weight-bytes').getAttribute('data-bytes')), f32, 'f32 frozen weights on the GPU');
    await page.getByTestId('frozen-format').selectOption('');

    // As if ./dev setup had not run: the page says so and keeps the model.
    // A static server answers a missing file with index.html (as this harness and `trunk serve` do).
    await page.route(`**/models/${GGUF_NAME}`, (route) => route.fulfill({ status: 200, contentType: 'text/html', body: '<!DOCTYPE html><html></html>' }));
    before = (await status(page)).text;
    await page.getByTestId('load-smollm2').click();
    s = await settled(page, before, 30_000);
    assert.equal(s.state, 'failed');
    assert.match(s.text, /not downloaded: run \.\/dev setup.*The previous model stays loaded\.$/s);
    assert.equal(await page.getByTestId('model-name').textContent(), 'austen-5m');
    await page.unroute(`**/models/${GGUF_NAME}`);

    // A download cut short, picked as a file: the reader's sentence, and the model stays.
    const cut = path.join(ARTIFACTS, 'cut.gguf');
    fs.writeFileSync(cut, fs.readFileSync(GGUF).subarray(0, 4 << 20));
    before = (await status(page)).text;
    await page.getByLabel('choose files').setInputFiles(cut);
    s = await settled(page, before, 60_000);
    assert.equal(s.state, 'failed');
    assert.match(s.text, /^Could not load cut\.gguf: .*(truncated|outside).*The previous model stays loaded\.$/s);
    assert.equal(await page.getByTestId('model-name').textContent(), 'austen-5m');

    // The real file, from the same origin; every status shown on the way is kept (the progress).
    await page.evaluate(() => {
      // The status paragraph is rendered anew on each change: watch its section.
      const read = () => document.querySelector('[data-testid="model-status"]')?.textContent;
      window.statuses = [];
      window.statusObserver = new MutationObserver(() => window.statuses.push(read()));
      window.statusObserver.observe(document.querySelector('section[aria-labelledby="model-heading"]'), { childList: true, characterData: true, subtree: true });
    });
    let t0 = Date.now();
    before = (await status(page)).text;
    await page.getByTestId('load-smollm2').click();
    s = await settled(page, before, 300_000);
    const shown = await page.evaluate(() => { window.statusObserver.disconnect(); return window.statuses; });
    const size = (fs.statSync(GGUF).size / 1e6).toFixed(1);
    assert.ok(shown.some((x) => new RegExp(`^Downloading ${GGUF_NAME}: [\\d.]+ MB of ${size} MB…$`).test(x)), `download progress: ${shown.join(' | ')}`);
    assert.equal(s.state, 'ready', `${s.text}\n${errors.join('\n')}`);
    t.diagnostic(`SmolLM2 fetched, imported and uploaded in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    assert.equal(await page.getByTestId('model-name').textContent(), GGUF_NAME);
    const kinds = {};
    let expectedBytes = 0;
    for (const { type, n } of gguf.tensors) {
      const kind = GGML_TYPES[type];
      assert.ok(kind, `ggml type ${type} in ${GGUF_NAME}`);
      kinds[kind] = (kinds[kind] ?? 0) + 1;
      expectedBytes += gpuBytes(kind, n);
    }
    const source = await page.getByTestId('model-source').textContent();
    for (const [kind, n] of Object.entries(kinds)) assert.ok(source.includes(`${kind} ×${n}`), `${source} lists ${kind} ×${n}`);
    assert.match(await page.getByTestId('weight-formats').textContent(), /q4_1 ×\d+.*\(as stored\)/);
    assert.equal(Number(await page.getByTestId('weight-bytes').getAttribute('data-bytes')), expectedBytes, 'frozen weights on the GPU = the GGUF tensors, packed');

    // Two steps at small settings.
    await fillSettings(page, { text: TEXT, rank: RANK, lr: 0.01, steps: STEPS, batch: 1, seqLen: SEQ });
    await page.waitForFunction(() => document.querySelector('[data-testid="text-stats"]')?.textContent.includes('windows of 8 tokens'), null, { timeout: 60_000 });
    const fitted = await fitText(page, TEXT, SEQ);
    t.diagnostic(`training text: ${fitted.length} characters, ${await page.getByTestId('text-stats').getAttribute('data-tokens')} tokens`);
    const estimate = Number(await page.getByTestId('memory').getAttribute('data-bytes'));
    assert.ok(estimate > expectedBytes, `the estimate ${estimate} holds the frozen weights ${expectedBytes}`);
    // Where the time goes (SwiftShader is the CPU): each change of the training status and step.
    await page.evaluate(() => {
      const t0 = performance.now();
      window.trace = [];
      const read = () => `${document.querySelector('[data-testid="train-status"]')?.dataset.state} ${document.querySelector('[data-testid="step"]')?.textContent ?? ''}`;
      let last = '';
      window.tracer = setInterval(() => {
        const now = read();
        if (now !== last) window.trace.push(`${((performance.now() - t0) / 1000).toFixed(1)} s: ${(last = now)}`);
      }, 100);
    });
    t0 = Date.now();
    await page.getByTestId('train').click();
    const state = await waitFor(page, 'train-status', 'state', 'finished', 600_000);
    assert.equal(state, 'finished', `${await page.getByTestId('train-status').textContent()}\n${errors.join('\n')}`);
    t.diagnostic(`${STEPS} steps (batch 1, seq ${SEQ}, r ${RANK} on q,v) with validation in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    t.diagnostic((await page.evaluate(() => { clearInterval(window.tracer); return window.trace; })).join('; '));
    const train = (await page.getByTestId('loss-chart').getAttribute('data-train')).split(',').map(Number);
    assert.equal(train.length, STEPS);
    // A pretrained model on English text: a loss well below ln(49152) ≈ 10.8 of a uniform guess.
    assert.ok(train.every((l) => Number.isFinite(l) && l < 8), `training losses ${train}`);
    assert.equal(Number(await page.getByTestId('train-bytes').getAttribute('data-bytes')), estimate, 'the run allocated what the page estimated');

    // The adapter: PEFT's files, the base named by its GGUF file, shapes from the GGUF's metadata.
    const [dl] = await Promise.all([page.waitForEvent('download', { timeout: 60_000 }), page.getByTestId('download-zip').click()]);
    const file = path.join(ARTIFACTS, `smollm2-${dl.suggestedFilename()}`);
    await dl.saveAs(file);
    const files = unzip(fs.readFileSync(file));
    const peft = JSON.parse(files['adapter_config.json']);
    assert.equal(peft.base_model_name_or_path, GGUF_NAME);
    assert.equal(peft.r, RANK);
    assert.deepEqual([...peft.target_modules].sort(), ['q_proj', 'v_proj']);
    const m = gguf.meta;
    const [hidden, heads, kvHeads, blocks] = ['embedding_length', 'attention.head_count', 'attention.head_count_kv', 'block_count'].map((k) => m[`llama.${k}`]);
    const hd = m['llama.attention.key_length'] ?? hidden / heads;
    const expected = {};
    for (let i = 0; i < blocks; i++) {
      for (const [mod, out] of [['q_proj', heads * hd], ['v_proj', kvHeads * hd]]) {
        const key = `base_model.model.model.layers.${i}.self_attn.${mod}`;
        expected[`${key}.lora_A.weight`] = [RANK, hidden];
        expected[`${key}.lora_B.weight`] = [out, RANK];
      }
    }
    const header = safetensorsHeader(files['adapter_model.safetensors']);
    const shapes = Object.fromEntries(Object.entries(header).filter(([k]) => k !== '__metadata__').map(([k, x]) => [k, x.shape]));
    assert.deepEqual(shapes, expected);
    assert.deepEqual(errors.filter((e) => !e.includes('favicon')), [], 'no errors in the console');
    t.diagnostic(`whole test ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } finally {
    await browser.close();
  }
});
