// The run survives a reload: the page keeps it in the browser's storage (IndexedDB) at every
// validation point, a reloaded page offers "Resume where you left off", and the resumed run ends
// with the very adapter an unbroken run of the same seed and settings ends with (byte for byte,
// AdamW state included), for a text and for examples (whose table and switches come back with it).
// "Start over" forgets it; a storage that refuses writes is a sentence and
// training finishes anyway.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { serve, launch, watchErrors, unzip, fillSettings, waitFor } from './harness.mjs';

const TEXT = fs.readFileSync(new URL('../../web/examples/ships_log.txt', import.meta.url), 'utf8').slice(0, 1200);
// 6 steps: the page validates (and saves) at steps 5 and 6. Windows of 8 tokens: 8 rows take the
// matrix–vector kernels, several times cheaper on SwiftShader than 16 rows padded to a 64-row tile.
const SETTINGS = { text: TEXT, rank: 2, lr: 0.01, steps: 6, batch: 1, seqLen: 8 };
const SEED = 7;
const EDITED = 'Varnholm lies where the whales turn back.';

let site;
before(async () => (site = await serve()));
after(async () => site?.close());

async function ready(page, errors) {
  const state = await waitFor(page, 'model-status', 'state', 'ready', 180_000);
  assert.equal(state, 'ready', `${await page.getByTestId('model-status').textContent()}\n${errors.join('\n')}`);
}

async function finish(page, errors) {
  const state = await waitFor(page, 'train-status', 'state', 'finished', 300_000);
  assert.equal(state, 'finished', `${await page.getByTestId('train-status').textContent()}\n${errors.join('\n')}`);
}

async function downloadZip(page) {
  const [dl] = await Promise.all([page.waitForEvent('download', { timeout: 60_000 }), page.getByTestId('download-zip').click()]);
  return fs.readFileSync(await dl.path());
}

/** The record the page keeps, read from IndexedDB here (null when there is none). */
const stored = (page) => page.evaluate(() => new Promise((done, fail) => {
  const open = indexedDB.open('loratab');
  open.onerror = () => fail(open.error);
  open.onsuccess = () => {
    const get = open.result.transaction('runs').objectStore('runs').get('current');
    get.onsuccess = () => done(get.result ? JSON.parse(get.result.meta) : null);
    get.onerror = () => fail(get.error);
  };
}));

test('reload mid-run, resume, and end with the unbroken run’s adapter', async (t) => {
  const browser = await launch();
  try {
    const context = await browser.newContext({ acceptDownloads: true });
    const page = await context.newPage();
    const errors = watchErrors(page);
    const t0 = Date.now();
    const mark = (what) => t.diagnostic(`${what}: ${Math.round((Date.now() - t0) / 1000)} s`);
    await page.goto(site.url);
    await ready(page, errors);
    mark('model loaded');
    assert.equal(await page.getByTestId('restore').count(), 0, 'a new browser has nothing to resume');

    // The unbroken run.
    await fillSettings(page, SETTINGS);
    await page.locator('#seed').fill(String(SEED));
    await page.getByTestId('train').click();
    await finish(page, errors);
    const unbroken = await downloadZip(page);
    mark('unbroken run');
    const chart = async () => (await page.getByTestId('loss-chart').getAttribute('data-train')).split(',');
    const unbrokenLosses = await chart();

    // The same run again, the page reloaded once it is kept at its first validation point.
    await page.getByTestId('train').click();
    await page.waitForFunction(() => document.querySelector('[data-testid="saved-note"]')?.dataset.step === '5', null, { timeout: 300_000 });
    mark('kept at step 5');
    await page.reload({ timeout: 120_000 });
    await ready(page, errors);
    mark('reloaded');
    const offer = page.getByTestId('restore');
    await offer.waitFor({ timeout: 30_000 });
    assert.match(await offer.textContent(), /Resume where you left off: step 5 of 6, saved just now\./);
    // The reloaded page starts from the defaults; Resume puts the run's text and settings back.
    await page.getByTestId('restore-resume').click();
    await finish(page, errors);
    assert.equal(await page.getByLabel('Training text').inputValue(), TEXT);
    assert.equal(await page.locator('#seed').inputValue(), String(SEED));
    assert.match(await page.getByTestId('step').textContent(), /Step 6 of 6/);
    assert.deepEqual(await chart(), unbrokenLosses, 'the same training losses, one per step, none twice');
    const resumed = await downloadZip(page);
    mark('resumed run');
    assert.deepEqual(Object.keys(unzip(resumed)).sort(), ['adapter_config.json', 'adapter_model.safetensors', 'training_data.json', 'training_state.safetensors']);
    assert.ok(resumed.equals(unbroken), 'the resumed run’s adapter and training state are the unbroken run’s, byte for byte');

    // The finished run is offered after another reload; Start over forgets it.
    assert.equal((await stored(page)).step, 6);
    await page.reload({ timeout: 120_000 });
    await ready(page, errors);
    await offer.waitFor({ timeout: 30_000 });
    assert.match(await offer.textContent(), /step 6 of 6/);
    await page.getByTestId('restore-start-over').click();
    await offer.waitFor({ state: 'detached', timeout: 10_000 });
    assert.equal(await stored(page), null, 'Start over clears the stored run');
    mark('start over');

    // An examples run (the built-in pairs, row 1 edited, loss on every token) reloaded after its
    // first validation point: the switch, the table and the answer-only switch come back, and the
    // run ends with the unbroken run's latest adapter.
    // The reloaded page started from the default settings (60 steps): the run's settings again.
    await fillSettings(page, SETTINGS);
    await page.locator('#seed').fill(String(SEED));
    await page.getByTestId('mode-examples').check();
    await page.getByLabel('Answer 1', { exact: true }).fill(EDITED);
    await page.getByTestId('answers-only').uncheck();
    const latestZip = async () => {
      await page.getByTestId('download-latest').check();
      return downloadZip(page);
    };
    await page.getByTestId('train').click();
    await finish(page, errors);
    const unbrokenExamples = await latestZip();
    const examplesLosses = await chart();
    mark('unbroken examples run');
    await page.getByTestId('train').click();
    await page.waitForFunction(() => document.querySelector('[data-testid="saved-note"]')?.dataset.step === '5', null, { timeout: 300_000 });
    await page.reload({ timeout: 120_000 });
    await ready(page, errors);
    await offer.waitFor({ timeout: 30_000 });
    assert.equal(await page.getByTestId('mode-text').isChecked(), true, 'a reloaded page starts on Text');
    await page.getByTestId('restore-resume').click();
    await finish(page, errors);
    assert.equal(await page.getByTestId('mode-examples').isChecked(), true);
    assert.match(await page.getByTestId('step').textContent(), /Step 6 of 6/);
    assert.equal(await page.getByLabel('Answer 1', { exact: true }).inputValue(), EDITED);
    assert.equal(await page.getByTestId('example-row').count(), 12);
    assert.equal(await page.getByTestId('answers-only').isChecked(), false);
    assert.deepEqual(await chart(), examplesLosses, 'the same training losses, one per step, none twice');
    const resumedExamples = await latestZip();
    const record = JSON.parse(unzip(resumedExamples)['training_data.json']);
    assert.deepEqual([record.data, record.completion_only_loss, record.max_length], ['examples', false, SETTINGS.seqLen]);
    assert.ok(resumedExamples.equals(unbrokenExamples), 'the resumed examples run’s adapter and state are the unbroken run’s, byte for byte');
    mark('examples run resumed');
    assert.deepEqual(errors.filter((e) => !e.includes('favicon')), [], 'no errors in the console');
  } finally {
    await browser.close();
  }
});

test('a storage that refuses writes is a sentence, and training finishes', async () => {
  const browser = await launch();
  try {
    const context = await browser.newContext();
    // As a full disk answers: every write refused with QuotaExceededError.
    await context.addInitScript(() => {
      IDBObjectStore.prototype.put = () => { throw new DOMException('The quota has been exceeded.', 'QuotaExceededError'); };
    });
    const page = await context.newPage();
    const errors = watchErrors(page);
    await page.goto(site.url);
    await ready(page, errors);
    await fillSettings(page, { ...SETTINGS, steps: 1 });
    await page.getByTestId('train').click();
    await finish(page, errors);
    assert.match(await page.getByTestId('storage-note').textContent(), /storage for this page is full, so the run was not saved\. Training is not affected/);
    assert.equal(await page.getByTestId('saved-note').count(), 0, 'nothing claims to be kept');
    assert.match(await page.getByTestId('step').textContent(), /Step 1 of 1/);
  } finally {
    await browser.close();
  }
});
