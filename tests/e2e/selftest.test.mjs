// The served page's "GPU self-test" section (collapsed; it runs when opened) shows the GPU adapter
// and reports that the self-test passed; without WebGPU the page says so in a sentence that names
// the browsers and flags that work.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { serve, launch, watchErrors, ARTIFACTS } from './harness.mjs';

let site;
before(async () => {
  site = await serve();
  fs.mkdirSync(ARTIFACTS, { recursive: true });
});
after(async () => site?.close());

// src/selftest.rs's `run`: for X·W, X·Wᵀ and Xᵀ·G, (m, n, k) = (7, 33, 130) and (130, 65, 33),
// named `matmul {layout} {m}×{k}·{k}×{n}`; then add, scale and the sum of squares.
const CHECKS = [
  ...['X·W', 'X·Wᵀ', 'Xᵀ·G'].flatMap((l) => [`matmul ${l} 7×130·130×33`, `matmul ${l} 130×33·33×65`]),
  'add ×1000',
  'scale ×1000',
  'sum of squares ×70001',
];

async function finalStatus(page) {
  const status = page.getByTestId('selftest');
  await page.waitForFunction(
    // Passed or failed: the panel may not be mounted yet (no status at all) when this starts.
    () => ['passed', 'failed'].includes(document.querySelector('[data-testid="selftest"]')?.dataset.status),
    null,
    { timeout: 300_000 },
  );
  return { status: await status.getAttribute('data-status'), text: await status.textContent() };
}

test('the page reports the GPU self-test passed on real WebGPU', async () => {
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const errors = watchErrors(page);
    await page.goto(site.url);
    await page.getByTestId('gpu-summary').click();
    const { status, text } = await finalStatus(page);
    assert.equal(status, 'passed', `${text}\n${errors.join('\n')}`);
    // Every check src/selftest.rs's `run` makes, by name and in order: three matmul layouts × two
    // shapes, add, scale and the sum of squares. A self-test that ran none ("0 of 0") fails here.
    assert.match(text, new RegExp(`Self-test passed: ${CHECKS.length} of ${CHECKS.length} GPU checks`));
    const rows = await page.locator('tbody tr').evaluateAll((trs) => trs.map((tr) => [...tr.cells].map((td) => td.textContent.trim())));
    assert.deepEqual(rows.map((r) => r[0]), CHECKS, 'the checks the self-test runs');
    assert.ok(rows.every((r) => r[3] === 'ok'), `every row says ok: ${JSON.stringify(rows)}`);
    const adapter = (await page.getByTestId('adapter-name').textContent()).trim();
    assert.ok(adapter.length > 0, 'the adapter name is shown');
    const failedRows = await page.locator('tbody tr', { hasText: 'FAIL' }).count();
    assert.equal(failedRows, 0);
    await page.screenshot({ path: path.join(ARTIFACTS, 'selftest.png'), fullPage: true });
  } finally {
    await browser.close();
  }
});

test('without WebGPU the page says which browsers and flags work', async () => {
  const browser = await launch({ webgpu: false });
  try {
    const page = await browser.newPage();
    await page.goto(site.url);
    // The model panel says it first, with no click.
    const model = page.getByTestId('model-status');
    await page.waitForFunction(() => document.querySelector('[data-testid="model-status"]')?.dataset.state === 'failed', null, { timeout: 60_000 });
    assert.match(await model.textContent(), /^WebGPU is not available.*--enable-unsafe-webgpu/);
    await page.getByTestId('gpu-summary').click();
    const { status, text } = await finalStatus(page);
    assert.equal(status, 'failed');
    assert.match(text, /WebGPU is not available/);
    assert.match(text, /--enable-unsafe-webgpu/);
  } finally {
    await browser.close();
  }
});
