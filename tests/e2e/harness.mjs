// Shared by the end-to-end tests: serve the Trunk build (dist/) on loopback and drive Debian's
// Chromium with real WebGPU on SwiftShader (flags from DEVELOPERS.md); read downloads (stored zips,
// safetensors headers) independently of the app; fill fields and wait for the page's states.
import assert from 'node:assert/strict';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const DIST = path.resolve(here, '../../dist');
export const ARTIFACTS = path.resolve(here, '../../target/e2e');

export const WEBGPU_FLAGS = [
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--enable-features=Vulkan',
  '--use-webgpu-adapter=swiftshader',
];
const QUIET_FLAGS = [
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-dev-shm-usage',
];

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript',
  '.wasm': 'application/wasm',
  '.css': 'text/css',
  '.json': 'application/json',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
};

/** Serve `dir` on 127.0.0.1 at a free port; resolves to { url, close }. With LORATAB_URL set (say
 *  to `./dev serve`'s http://127.0.0.1:8080/) the tests use that server instead. */
export async function serve(dir = DIST) {
  if (process.env.LORATAB_URL) return { url: process.env.LORATAB_URL, close: async () => {} };
  if (!fs.existsSync(path.join(dir, 'index.html'))) {
    throw new Error(`${dir}/index.html is missing: build the app first (trunk build)`);
  }
  const server = http.createServer((req, res) => {
    const urlPath = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    let file = path.join(dir, urlPath === '/' ? 'index.html' : urlPath);
    if (!file.startsWith(dir) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      file = path.join(dir, 'index.html');
    }
    // With its length, as static servers send it (the page shows a download's progress against it).
    res.writeHead(200, { 'content-type': MIME[path.extname(file)] ?? 'application/octet-stream', 'content-length': fs.statSync(file).size });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address();
  return { url: `http://127.0.0.1:${port}/`, close: () => new Promise((ok) => server.close(ok)) };
}

/** Launch headless Chromium; `webgpu: false` leaves WebGPU at the browser's defaults (off here). */
export async function launch({ webgpu = true } = {}) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_BIN ?? '/usr/bin/chromium',
    headless: true,
    args: [...(webgpu ? WEBGPU_FLAGS : ['--no-sandbox', '--disable-gpu']), ...QUIET_FLAGS],
  });
}

/** Every request the page makes to another origin than `origin` (blob: and data: URLs are local).
 *  The page must make none: the user's data never leaves the machine. */
export function watchForeignRequests(page, origin) {
  const foreign = [];
  page.on('request', (r) => {
    const url = r.url();
    if (!url.startsWith(origin) && !url.startsWith('blob:') && !url.startsWith('data:')) foreign.push(url);
  });
  return foreign;
}

/** Collect page errors and console errors so a failing test can show them. */
export function watchErrors(page) {
  const errors = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
  return errors;
}

/** The files of a stored (uncompressed) zip, by its central directory; each CRC is checked. */
export function unzip(buf) {
  const eocd = buf.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
  assert.ok(eocd >= 0, 'the download is a zip file');
  const count = buf.readUInt16LE(eocd + 10);
  let at = buf.readUInt32LE(eocd + 16);
  const files = {};
  for (let i = 0; i < count; i++) {
    assert.equal(buf.readUInt32LE(at), 0x02014b50);
    const [method, crc, size, nameLen, extra, comment, local] = [
      buf.readUInt16LE(at + 10), buf.readUInt32LE(at + 16), buf.readUInt32LE(at + 20),
      buf.readUInt16LE(at + 28), buf.readUInt16LE(at + 30), buf.readUInt16LE(at + 32), buf.readUInt32LE(at + 42),
    ];
    const name = buf.toString('utf8', at + 46, at + 46 + nameLen);
    assert.equal(method, 0, `${name} is stored`);
    const start = local + 30 + buf.readUInt16LE(local + 26) + buf.readUInt16LE(local + 28);
    const data = buf.subarray(start, start + size);
    assert.equal(zlib.crc32(data), crc, `${name}'s CRC-32`);
    files[name] = data;
    at += 46 + nameLen + extra + comment;
  }
  return files;
}

/** The JSON header of a safetensors file (8-byte little-endian length, then JSON). */
export function safetensorsHeader(buf) {
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.toString('utf8', 8, 8 + n));
  const ends = Object.entries(header).filter(([k]) => k !== '__metadata__').map(([, t]) => t.data_offsets[1]);
  assert.equal(Math.max(...ends), buf.length - 8 - n, 'the tensors fill the file');
  return header;
}

export async function setField(page, label, value) {
  await page.getByLabel(label, { exact: true }).fill(String(value));
}

/** The training text and the settings fields (targets stay the default q and v). */
export async function fillSettings(page, { text, rank, lr, steps, batch, seqLen }) {
  await page.getByLabel('Training text').fill(text);
  await setField(page, 'Rank r', rank);
  await setField(page, 'Alpha α', 2 * rank);
  await setField(page, 'Learning rate', lr);
  await setField(page, 'Steps', steps);
  await setField(page, 'Batch', batch);
  await setField(page, 'Sequence length', seqLen);
}

export async function waitFor(page, testid, attr, wanted, timeout) {
  await page.waitForFunction(
    ([id, a, w]) => {
      const v = document.querySelector(`[data-testid="${id}"]`)?.getAttribute(`data-${a}`);
      return w === null ? v : v === w || v === 'failed';
    },
    [testid, attr, wanted],
    { timeout },
  );
  return page.getByTestId(testid).getAttribute(`data-${attr}`);
}

/** Drop `paths` (files or folders) on the model panel's drop zone, as a drag from the desktop does
 *  (Chrome's DevTools protocol drops real paths, so the page sees real file-system entries). */
export async function dropPaths(page, paths) {
  const cdp = await page.context().newCDPSession(page);
  const box = await page.getByTestId('dropzone').boundingBox();
  const [x, y] = [box.x + box.width / 2, box.y + box.height / 2];
  const data = { items: [], files: paths, dragOperationsMask: 1 };
  for (const type of ['dragEnter', 'dragOver', 'drop']) {
    await cdp.send('Input.dispatchDragEvent', { type, x, y, data });
  }
  await cdp.detach();
}
