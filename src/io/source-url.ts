/**
 * A byte source over HTTP(S) with fetch: browsers, workers and Node 20 alike. Binary files are read
 * with `Range` requests where the server honours them (206), so only the bytes asked for travel and
 * no whole shard is ever held; a server that ignores ranges (200) sends the whole file once, and it is
 * kept as one ArrayBuffer and sliced from then on.
 */
import { KiviError } from '../util/errors.js';
import type { ByteSource, RandomAccess } from './source.js';

export type FetchLike = (url: string, init?: RequestInit) => Promise<Response>;

export interface UrlSourceOptions {
  /** fetch to use (default: the global one). */
  fetch?: FetchLike;
  /** Extra request headers (e.g. authorization). */
  headers?: Record<string, string>;
}

/** Redirects followed by hand when the caller's headers must stay on the model's origin. */
const MAX_REDIRECTS = 10;

/** The first request for a binary file asks for this much: headers usually fit, saving a round trip. */
const PROBE_BYTES = 64 * 1024;

const short = () => new KiviError('unexpected end of file while reading tensor data');

// Content-Range: "bytes FIRST-LAST/TOTAL" or "bytes */TOTAL"; total is NaN when the server sends "*".
function parseContentRange(v: string | null): { first: number; last: number; total: number } | undefined {
  const m = v ? /^bytes\s+(?:(\d+)-(\d+)|\*)\/(\d+|\*)$/i.exec(v.trim()) : null;
  if (!m) return undefined;
  return { first: m[1] ? Number(m[1]) : NaN, last: m[2] ? Number(m[2]) : NaN, total: m[3] === '*' ? NaN : Number(m[3]) };
}

class UrlFile implements RandomAccess {
  /**
   * @param head the file's first bytes (the whole file when `whole`)
   */
  constructor(
    private readonly src: UrlSource,
    readonly where: string,
    readonly size: number,
    private head: Uint8Array,
    private whole: boolean,
  ) {}

  async read(dst: Uint8Array, position: number): Promise<void> {
    const end = position + dst.length;
    if (end > this.size) throw short();
    // Whatever the first request already brought is copied, not fetched again.
    const have = Math.max(0, Math.min(end, this.head.length) - position);
    if (have > 0) {
      dst.set(this.head.subarray(position, position + have));
      dst = dst.subarray(have);
      position += have;
    }
    if (dst.length === 0) return;
    if (this.whole) throw short();
    const res = await this.src.request(this.where, { Range: `bytes=${position}-${position + dst.length - 1}` });
    if (res.status === 200) {
      // The server stopped honouring ranges: keep the whole file from now on.
      this.head = new Uint8Array(await res.arrayBuffer());
      this.whole = true;
      return this.read(dst, position);
    }
    if (res.status === 416) throw short();
    if (res.status !== 206) throw this.src.httpError(this.where, res);
    const cr = parseContentRange(res.headers.get('content-range'));
    if (cr && cr.first !== position) {
      throw new KiviError(`${this.where}: server sent bytes from ${cr.first}, asked for ${position}`);
    }
    await readBodyInto(res, dst, this.where);
  }

  async close(): Promise<void> {
    this.head = new Uint8Array(0);
  }
}

/** Stream a response body into dst (no intermediate copy of the whole range). */
async function readBodyInto(res: Response, dst: Uint8Array, where: string): Promise<void> {
  if (!res.body) {
    const b = new Uint8Array(await res.arrayBuffer());
    if (b.length < dst.length) throw short();
    if (b.length > dst.length) throw new KiviError(`${where}: server sent ${b.length} bytes, asked for ${dst.length}`);
    dst.set(b);
    return;
  }
  const reader = res.body.getReader();
  let off = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (off + value.length > dst.length) throw new KiviError(`${where}: server sent more bytes than asked for (${dst.length})`);
      dst.set(value, off);
      off += value.length;
    }
  } catch (e) {
    if (e instanceof KiviError) throw e;
    throw new KiviError(`${where}: download failed: ${(e as Error)?.message ?? String(e)}`);
  } finally {
    reader.releaseLock();
  }
  if (off < dst.length) throw short();
}

export class UrlSource implements ByteSource {
  readonly where: string;
  private readonly origin: string;
  private readonly fetchFn: FetchLike;

  constructor(
    base: string | URL,
    private readonly opts: UrlSourceOptions = {},
  ) {
    let url: URL;
    try {
      url = new URL(String(base));
    } catch {
      throw new KiviError(`bad model URL "${String(base)}"`);
    }
    // A base names a directory: resolve file names inside it, not beside it.
    if (!url.pathname.endsWith('/')) url.pathname += '/';
    this.where = url.href;
    this.origin = url.origin;
    if (!opts.fetch && typeof globalThis.fetch !== 'function') {
      throw new KiviError('fetch is not available here (Node ≥ 18 or a browser is needed to load from a URL)');
    }
    // The global fetch must be called unbound from any object (browsers throw "Illegal invocation").
    this.fetchFn = opts.fetch ?? ((u, init) => globalThis.fetch(u, init));
  }

  /** A file inside the base; the name is one path segment (`#`, `?`, `%` in it are literal characters). */
  locate(name: string): string {
    return new URL(encodeURIComponent(name), this.where).href;
  }

  /**
   * One GET (or HEAD) on the model's origin; network failures become one-line KiviErrors. The caller's
   * headers (an authorization token, say) are sent to the model's origin only: with such headers,
   * redirects are followed here hop by hop, and from the first hop that leaves the origin on, without them.
   */
  async request(url: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Response> {
    if (new URL(url).origin !== this.origin) throw new KiviError(`refusing to fetch ${url}: it is outside the model's origin ${this.origin}`);
    const own = this.opts.headers ?? {};
    // Nothing of the caller's to protect: let fetch follow redirects as usual.
    if (Object.keys(own).length === 0) return this.fetchOnce(url, { method, headers });
    let current = url;
    let sameOrigin = true;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const res = await this.fetchOnce(current, { method, headers: sameOrigin ? { ...own, ...headers } : headers, redirect: 'manual' });
      // A browser hides where a redirect leads: follow it, without the caller's headers.
      if (res.type === 'opaqueredirect') return this.fetchOnce(current, { method, headers, redirect: 'follow' });
      const location = res.headers.get('location');
      if (res.status < 300 || res.status >= 400 || res.status === 304 || location === null) return res;
      await res.body?.cancel();
      const next = new URL(location, current);
      if (next.origin !== this.origin) sameOrigin = false;
      current = next.href;
    }
    throw new KiviError(`cannot fetch ${url}: more than ${MAX_REDIRECTS} redirects`);
  }

  private async fetchOnce(url: string, init: RequestInit): Promise<Response> {
    try {
      return await this.fetchFn(url, init);
    } catch (e) {
      throw new KiviError(`cannot fetch ${url}: ${(e as Error)?.message ?? String(e)}`);
    }
  }

  httpError(url: string, res: Response): KiviError {
    return new KiviError(`cannot open ${url}: HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''}`);
  }

  private static missing(res: Response): boolean {
    return res.status === 404 || res.status === 410;
  }

  async readText(name: string): Promise<string | undefined> {
    const url = this.locate(name);
    const res = await this.request(url);
    if (UrlSource.missing(res)) return undefined;
    if (!res.ok) throw this.httpError(url, res);
    return res.text();
  }

  async open(name: string): Promise<RandomAccess | undefined> {
    const url = this.locate(name);
    const res = await this.request(url, { Range: `bytes=0-${PROBE_BYTES - 1}` });
    if (UrlSource.missing(res)) return undefined;
    if (res.status === 200) {
      const all = new Uint8Array(await res.arrayBuffer());
      return new UrlFile(this, url, all.length, all, true);
    }
    const cr = parseContentRange(res.headers.get('content-range'));
    if (res.status === 416) {
      // Only an empty file cannot serve byte 0.
      await res.body?.cancel();
      return new UrlFile(this, url, cr && Number.isFinite(cr.total) ? cr.total : 0, new Uint8Array(0), true);
    }
    if (res.status !== 206) throw this.httpError(url, res);
    const head = new Uint8Array(await res.arrayBuffer());
    if (cr && Number.isFinite(cr.first) && cr.first !== 0) throw new KiviError(`${url}: server sent bytes from ${cr.first}, asked for 0`);
    let size = cr?.total ?? NaN;
    if (!Number.isFinite(size)) size = await this.sizeByHead(url);
    if (!Number.isFinite(size)) {
      // No way to learn the size (e.g. a cross-origin server that hides Content-Range): take it whole.
      const whole = await this.request(url);
      if (!whole.ok) throw this.httpError(url, whole);
      const all = new Uint8Array(await whole.arrayBuffer());
      return new UrlFile(this, url, all.length, all, true);
    }
    if (head.length > size) throw new KiviError(`${url}: server sent ${head.length} bytes of a ${size}-byte file`);
    return new UrlFile(this, url, size, head, head.length === size);
  }

  private async sizeByHead(url: string): Promise<number> {
    const res = await this.request(url, {}, 'HEAD');
    const len = res.headers.get('content-length');
    return res.ok && len !== null && /^\d+$/.test(len) && !res.headers.get('content-encoding') ? Number(len) : NaN;
  }
}

/** A model directory served over HTTP(S): `urlSource('https://host/models/llama-28m-gqa/')`. */
export function urlSource(base: string | URL, opts?: UrlSourceOptions): UrlSource {
  return new UrlSource(base, opts);
}
