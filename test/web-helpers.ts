/** A small static file server for loader tests: Range support can be switched off or half-hidden. */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';

/** The Chromium the browser tests drive (Debian's package; KIVI_CHROMIUM to use another). */
export const CHROMIUM = process.env.KIVI_CHROMIUM ?? '/usr/bin/chromium';

/** Under CI a missing browser is a failure, not a skip: otherwise CI would never run these tests. */
export function noChromium(t: { skip(message: string): void }): boolean {
  if (fs.existsSync(CHROMIUM)) return false;
  const why = `no Chromium at ${CHROMIUM} (apt-get install chromium, or set KIVI_CHROMIUM)`;
  if (process.env.CI === 'true') assert.fail(`${why}; under CI=true the browser tests must run (.ci/run installs it)`);
  t.skip(why);
  return true;
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript',
  '.css': 'text/css',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
};

export type RangeMode = 'ranges' | 'no-ranges' | 'no-content-range';

export interface Served {
  url: string;
  /** Requests per path, with the bytes of body sent. */
  log: { method: string; path: string; range: string | undefined; status: number; bytes: number; headers: http.IncomingHttpHeaders }[];
  close(): Promise<void>;
}

/**
 * Serve `root` on 127.0.0.1. 'ranges': 206 with Content-Range; 'no-ranges': every GET gets the whole
 * file (200), as a server without Range support does; 'no-content-range': 206 without Content-Range
 * (what a browser sees cross-origin when the header is not exposed). `redirect` maps a path to the URL
 * it is redirected to (302), or to undefined to serve it.
 */
export async function serveDir(root: string, mode: RangeMode = 'ranges', opts: { redirect?: (path: string) => string | undefined } = {}): Promise<Served> {
  const log: Served['log'] = [];
  const server = http.createServer((req, res) => {
    const rel = decodeURIComponent(new URL(req.url!, 'http://x').pathname);
    const file = path.join(root, path.normalize(rel));
    const range = req.headers.range;
    const entry = { method: req.method!, path: rel, range, status: 404, bytes: 0, headers: req.headers };
    log.push(entry);
    const to = opts.redirect?.(rel);
    if (to !== undefined) {
      entry.status = 302;
      res.writeHead(302, { location: to }).end();
      return;
    }
    if (!file.startsWith(root) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404).end();
      return;
    }
    const size = fs.statSync(file).size;
    const type = TYPES[path.extname(file)];
    if (type) res.setHeader('content-type', type);
    const m = range && mode !== 'no-ranges' ? /^bytes=(\d+)-(\d*)$/.exec(range) : null;
    let start = 0;
    let end = size; // exclusive
    if (m) {
      start = Number(m[1]);
      end = m[2] ? Math.min(Number(m[2]) + 1, size) : size;
      if (start >= size) {
        entry.status = 416;
        res.writeHead(416, { 'content-range': `bytes */${size}` }).end();
        return;
      }
      entry.status = 206;
      res.writeHead(206, {
        'content-length': end - start,
        ...(mode === 'ranges' ? { 'content-range': `bytes ${start}-${end - 1}/${size}` } : {}),
      });
    } else {
      entry.status = 200;
      res.writeHead(200, { 'content-length': size });
    }
    if (req.method === 'HEAD' || end === start) {
      res.end();
      return;
    }
    entry.bytes = end - start;
    fs.createReadStream(file, { start, end: end - 1 }).pipe(res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/`,
    log,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
