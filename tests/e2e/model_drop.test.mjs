// Dropping a Hugging Face model folder on the page, as a drag from the desktop does (Chrome's
// DevTools protocol drops real paths, so the page sees real file-system entries and walks the
// folder). A broken folder is a sentence and keeps the loaded model and the user's text; a good
// one loads, and the panel's name and parameter count are checked against the folder itself.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { serve, launch, watchErrors, dropPaths, ARTIFACTS } from './harness.mjs';

const FIXTURE = new URL('../fixtures/llama-tiny/', import.meta.url).pathname;

let site;
before(async () => {
  site = await serve();
  fs.mkdirSync(ARTIFACTS, { recursive: true });
});
after(async () => site?.close());

/** A copy of llama-tiny under target/e2e/<name>, with what real model folders also hold. */
function modelFolder(name, { cut = false } = {}) {
  const dir = path.join(ARTIFACTS, name);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(path.join(dir, '.git', 'lfs'), { recursive: true });
  for (const f of ['config.json', 'tokenizer.json', 'generation_config.json']) {
    fs.copyFileSync(path.join(FIXTURE, f), path.join(dir, f));
  }
  const weights = fs.readFileSync(path.join(FIXTURE, 'model.safetensors'));
  // A download cut short: the header promises more bytes than the file has.
  fs.writeFileSync(path.join(dir, 'model.safetensors'), cut ? weights.subarray(0, weights.length >> 1) : weights);
  // Neither is read: another weights format, and git's own files (a clone of a model repository).
  fs.writeFileSync(path.join(dir, 'pytorch_model.bin'), Buffer.alloc(1024));
  fs.writeFileSync(path.join(dir, '.git', 'lfs', 'config.json'), 'not json');
  fs.writeFileSync(path.join(dir, 'README.md'), '# a model\n');
  return dir;
}

const status = async (page) => ({
  state: await page.getByTestId('model-status').getAttribute('data-state'),
  text: await page.getByTestId('model-status').textContent(),
});

test('a dropped model folder loads; a broken one is a sentence and keeps the model and the text', async () => {
  const browser = await launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const errors = watchErrors(page);
    await page.goto(site.url);
    await page.waitForFunction(() => ['ready', 'failed'].includes(document.querySelector('[data-testid="model-status"]')?.dataset.state), null, { timeout: 180_000 });
    assert.equal((await status(page)).state, 'ready', `${(await status(page)).text}\n${errors.join('\n')}`);
    const defaultName = await page.getByTestId('model-name').textContent();
    const text = 'Text the user typed before dropping the wrong folder. '.repeat(20);
    await page.getByLabel('Training text').fill(text);

    await dropPaths(page, [modelFolder('cut-model', { cut: true })]);
    await page.waitForFunction(() => document.querySelector('[data-testid="model-status"]')?.dataset.state === 'failed', null, { timeout: 60_000 });
    const failed = (await status(page)).text;
    assert.match(failed, /^Could not load cut-model: .*model\.safetensors.*The previous model stays loaded\.$/s);
    assert.equal(await page.getByTestId('model-name').textContent(), defaultName, 'the default model is still described');

    await dropPaths(page, [modelFolder('llama-tiny')]);
    await page.waitForFunction(
      (before) => {
        const s = document.querySelector('[data-testid="model-status"]');
        return s?.dataset.state === 'ready' || (s?.dataset.state === 'failed' && s.textContent !== before);
      },
      failed,
      { timeout: 120_000 },
    );
    const loaded = await status(page);
    assert.equal(loaded.state, 'ready', `${loaded.text}\n${errors.join('\n')}`);
    assert.equal(await page.getByTestId('model-name').textContent(), 'llama-tiny', 'named after the dropped folder');
    // The parameter count from the safetensors header, read here.
    const bytes = fs.readFileSync(path.join(FIXTURE, 'model.safetensors'));
    const header = JSON.parse(bytes.subarray(8, 8 + Number(bytes.readBigUInt64LE(0))).toString());
    const params = Object.entries(header)
      .filter(([k]) => k !== '__metadata__')
      .reduce((n, [, t]) => n + t.shape.reduce((a, b) => a * b, 1), 0);
    assert.equal((await page.getByTestId('model-params').textContent()).replaceAll(',', ''), String(params));
    assert.equal(await page.getByLabel('Training text').inputValue(), text, 'the text is kept');
    assert.deepEqual(errors.filter((e) => !e.includes('favicon')), [], 'no errors in the console');
  } finally {
    await browser.close();
  }
});
