/**
 * The cache file format: one sequence's cache, all layers, exactly as held in memory (KIVI codes,
 * scales, minimums and residual pages; fp16/fp32 pages), so a restored cache continues bit for bit.
 *
 *   bytes 0..7    magic "KIVICACH"
 *   bytes 8..11   format version (u32, little-endian)
 *   bytes 12..15  header length H (u32)
 *   bytes 16..    header: UTF-8 JSON {model, spec, shape, length, state, pages: [section, bytes]…, tokens?, sha256}
 *   then          the pages' bytes, in the header's order
 *
 * `model` is the model's fingerprint (config and weights), `spec` the cache spec's canonical form,
 * `sha256` the SHA-256 of the header without it followed by the payload. Reading refuses another model,
 * another spec, another version and any corruption with a one-line error — never a wrong answer.
 * `tokens`, when the writer knew them, is the SHA-256 of the held tokens' ids (tokenHash), so a file can
 * be checked against the prompt it is meant to continue.
 */

import type { AttnShape } from '../kernels/types.js';
import { KiviError } from '../util/errors.js';
import { type CacheSpec, formatKvSpec } from './spec.js';
import type { CacheImage, KvCache } from './types.js';

export const CACHE_MAGIC = 'KIVICACH';
export const CACHE_FORMAT_VERSION = 2;
/** Largest header accepted (a cache of millions of pages still has a header far below this). */
const MAX_HEADER = 64 << 20;

interface Header {
  model: string;
  spec: string;
  shape: AttnShape;
  length: number;
  state: number[];
  pages: [number, number][];
  tokens?: string;
  sha256?: string;
}

export interface CacheFileIdentity {
  /** The model's fingerprint (LoadedModel.fingerprint). */
  model: string;
  spec: CacheSpec;
  shape: AttnShape;
  /** The held tokens' tokenHash: written into the header; when reading, a file must carry this one. */
  tokens?: string;
}

/** A decoded file: the image to restore, and the tokenHash it carries (null: it does not say). */
export interface DecodedCache extends CacheImage {
  tokens: string | null;
}

/** The bytes token ids are hashed as: int32 little-endian each. */
export function tokenBytes(ids: ArrayLike<number>, n = ids.length): Uint8Array {
  const out = new Uint8Array(4 * n);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < n; i++) dv.setInt32(4 * i, ids[i]!, true);
  return out;
}

/** SHA-256 (hex) of the first n token ids: what a cache file's `tokens` field holds. */
export function tokenHash(ids: ArrayLike<number>, n = ids.length): Promise<string> {
  return sha256([tokenBytes(ids, n)]);
}

async function sha256(parts: Uint8Array[]): Promise<string> {
  let n = 0;
  for (const p of parts) n += p.byteLength;
  const all = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    all.set(p, o);
    o += p.byteLength;
  }
  const d = new Uint8Array(await globalThis.crypto.subtle.digest('SHA-256', all));
  return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Serialize a cache (its pages are read back from the back end). */
export async function encodeCache(cache: KvCache, id: CacheFileIdentity): Promise<Uint8Array> {
  const img = await cache.save();
  return encodeImage(img, id);
}

export async function encodeImage(img: CacheImage, id: CacheFileIdentity): Promise<Uint8Array> {
  const s = id.shape;
  const header: Header = {
    model: id.model,
    spec: formatKvSpec(id.spec),
    shape: { numLayers: s.numLayers, numHeads: s.numHeads, numKvHeads: s.numKvHeads, headDim: s.headDim },
    length: img.length,
    state: img.state,
    pages: img.pages.map((p) => [p.section, p.bytes.byteLength]),
  };
  if (id.tokens !== undefined) header.tokens = id.tokens;
  const enc = new TextEncoder();
  header.sha256 = await sha256([enc.encode(JSON.stringify(header)), ...img.pages.map((p) => p.bytes)]);
  const h = enc.encode(JSON.stringify(header));
  const payload = img.pages.reduce((a, p) => a + p.bytes.byteLength, 0);
  const out = new Uint8Array(16 + h.byteLength + payload);
  out.set(enc.encode(CACHE_MAGIC), 0);
  const dv = new DataView(out.buffer);
  dv.setUint32(8, CACHE_FORMAT_VERSION, true);
  dv.setUint32(12, h.byteLength, true);
  out.set(h, 16);
  let o = 16 + h.byteLength;
  for (const p of img.pages) {
    out.set(p.bytes, o);
    o += p.bytes.byteLength;
  }
  return out;
}

/** Parse and check a cache file against the model and spec it must restore into; the image to restore. */
export async function decodeCache(bytes: Uint8Array, id: CacheFileIdentity): Promise<DecodedCache> {
  const bad = (why: string): never => {
    throw new KiviError(`not a usable cache file: ${why}`);
  };
  if (bytes.byteLength < 16 || new TextDecoder().decode(bytes.subarray(0, 8)) !== CACHE_MAGIC) bad('no KIVICACH header');
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = dv.getUint32(8, true);
  if (version !== CACHE_FORMAT_VERSION) bad(`format version ${version}, this kivi reads version ${CACHE_FORMAT_VERSION}`);
  const hlen = dv.getUint32(12, true);
  if (hlen > MAX_HEADER || 16 + hlen > bytes.byteLength) bad('truncated header');
  let header: Header;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(16, 16 + hlen))) as Header;
  } catch {
    return bad('corrupt header');
  }
  if (
    typeof header !== 'object' ||
    header === null ||
    typeof header.model !== 'string' ||
    typeof header.spec !== 'string' ||
    !Array.isArray(header.pages) ||
    !Array.isArray(header.state) ||
    typeof header.sha256 !== 'string' ||
    !Number.isSafeInteger(header.length) ||
    (header.tokens !== undefined && typeof header.tokens !== 'string')
  ) {
    bad('corrupt header');
  }
  if (header.model !== id.model) bad('it was saved by another model (fingerprints differ)');
  const spec = formatKvSpec(id.spec);
  if (header.spec !== spec) bad(`it holds a "${header.spec}" cache, not "${spec}"`);
  const s = id.shape;
  if (JSON.stringify(header.shape) !== JSON.stringify({ numLayers: s.numLayers, numHeads: s.numHeads, numKvHeads: s.numKvHeads, headDim: s.headDim })) {
    bad("its shape is not the model's");
  }
  let o = 16 + hlen;
  const pages: CacheImage['pages'] = [];
  for (const pg of header.pages) {
    if (!Array.isArray(pg) || pg.length !== 2 || !pg.every((x) => Number.isSafeInteger(x) && x >= 0)) bad('corrupt page table');
    const [section, n] = pg as [number, number];
    if (o + n > bytes.byteLength) bad('truncated page data');
    pages.push({ section, bytes: bytes.subarray(o, o + n) });
    o += n;
  }
  if (o !== bytes.byteLength) bad('trailing bytes');
  const { sha256: sum, ...rest } = header;
  const check = await sha256([new TextEncoder().encode(JSON.stringify(rest)), ...pages.map((p) => p.bytes)]);
  if (check !== sum) bad('checksum mismatch (corrupt data)');
  if (id.tokens !== undefined && header.tokens !== id.tokens) {
    bad(header.tokens === undefined ? 'it does not say which tokens it holds' : `its ${header.length} tokens are not the ones expected`);
  }
  return { length: header.length, state: header.state, pages, tokens: header.tokens ?? null };
}

/** Restore a cache file into an empty cache (the cache is left empty if the file is refused). */
export async function restoreCache(cache: KvCache, bytes: Uint8Array, id: CacheFileIdentity): Promise<void> {
  const img = await decodeCache(bytes, id);
  try {
    cache.restore(img);
  } catch (e) {
    cache.free();
    throw e;
  }
}
