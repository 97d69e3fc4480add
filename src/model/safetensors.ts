/**
 * safetensors reader: an 8-byte little-endian header length, a JSON header, then raw tensor bytes.
 * Only the header is parsed as text; tensor bytes are read straight into typed arrays, one tensor at a
 * time, so no file is ever held whole in memory. Reads go through a RandomAccess (source.ts), so the
 * same code reads a local file or a URL.
 */

import type { RandomAccess } from '../io/source.js';
import { fromHalfBits } from '../quant/float16.js';
import { KiviError } from '../util/errors.js';

export type DType = 'F32' | 'F16' | 'BF16';
const DTYPE_BYTES: Record<DType, number> = { F32: 4, F16: 2, BF16: 2 };
const MAX_HEADER = 100 * 1024 * 1024;

export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** Absolute byte range in the file. */
  begin: number;
  end: number;
  /** The file's name within the model (e.g. a shard's), as the source opens it. */
  file: string;
}

/** Read and check a safetensors header: every entry against the file's size. */
export async function readHeader(f: RandomAccess, file: string): Promise<Map<string, TensorInfo>> {
  const size = f.size;
  const where = f.where;
  if (size < 8) throw new KiviError(`${where}: truncated safetensors file (${size} bytes)`);
  const lenBuf = new Uint8Array(8);
  await f.read(lenBuf, 0);
  const headerLen = Number(new DataView(lenBuf.buffer).getBigUint64(0, true));
  if (headerLen > size - 8 || headerLen > MAX_HEADER) {
    throw new KiviError(`${where}: header length ${headerLen} runs past the end of the file (${size} bytes)`);
  }
  const headerBuf = new Uint8Array(headerLen);
  await f.read(headerBuf, 8);
  return parseHeader(headerBuf, size, where, file);
}

/** Parse header JSON bytes (the file's bytes [8, 8 + length)) and check each entry. */
export function parseHeader(headerBuf: Uint8Array, size: number, where: string, file: string): Map<string, TensorInfo> {
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBuf));
  } catch {
    throw new KiviError(`${where}: malformed safetensors header (bad JSON)`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new KiviError(`${where}: malformed safetensors header (not an object)`);
  }
  const dataStart = 8 + headerBuf.length;
  const out = new Map<string, TensorInfo>();
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') continue;
    const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e !== 'object' || e === null) throw new KiviError(`${where}: tensor "${name}" has a malformed entry`);
    if (typeof e.dtype !== 'string' || !(e.dtype in DTYPE_BYTES)) {
      throw new KiviError(`${where}: tensor "${name}" has unsupported dtype ${JSON.stringify(e.dtype)} (supported: F32, F16, BF16)`);
    }
    const dtype = e.dtype as DType;
    const shape = e.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new KiviError(`${where}: tensor "${name}" has a malformed shape`);
    }
    const offs = e.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isInteger(d) && d >= 0) || offs[0] > offs[1]) {
      throw new KiviError(`${where}: tensor "${name}" has malformed data_offsets`);
    }
    const begin = dataStart + (offs[0] as number);
    const end = dataStart + (offs[1] as number);
    if (end > size) {
      throw new KiviError(`${where}: tensor "${name}" data [${offs[0]}, ${offs[1]}) lies outside the file`);
    }
    const count = (shape as number[]).reduce((a, b) => a * b, 1);
    if (count * DTYPE_BYTES[dtype] !== end - begin) {
      throw new KiviError(`${where}: tensor "${name}" byte length ${end - begin} does not match shape [${shape.join(', ')}] × ${dtype}`);
    }
    out.set(name, { name, dtype, shape: shape as number[], begin, end, file });
  }
  // Each tensor owns its bytes: overlapping ranges would make two tensors alias one another's data.
  const byStart = [...out.values()].filter((t) => t.end > t.begin).sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < byStart.length; i++) {
    const [a, b] = [byStart[i - 1]!, byStart[i]!];
    if (b.begin < a.end) {
      throw new KiviError(
        `${where}: tensors "${a.name}" and "${b.name}" overlap (data [${a.begin - dataStart}, ${a.end - dataStart}) and [${b.begin - dataStart}, ${b.end - dataStart}))`,
      );
    }
  }
  return out;
}

/** Elements read per request: bounds the temporary buffer, whatever the tensor's size. */
const CHUNK = 1 << 20;

/** Bytes of the largest piece readTensorChunks reads at once: a `scratch` of this size serves every tensor. */
export const CHUNK_BYTES = CHUNK * 4;

/**
 * Read a tensor's raw bytes in pieces of at most CHUNK elements: `take(bytes, firstElement)` gets each
 * piece (little-endian element bytes, as in the file). No tensor is ever held whole. A loader reading
 * many tensors passes one `scratch` for all of them: a fresh buffer per tensor leaves megabytes of freed
 * blocks in the C heap that it may never give back.
 */
export async function readTensorChunks(
  f: RandomAccess,
  info: TensorInfo,
  take: (bytes: Uint8Array, firstElement: number) => void,
  scratch?: Uint8Array,
): Promise<void> {
  const size = DTYPE_BYTES[info.dtype];
  const n = info.shape.reduce((a, b) => a * b, 1);
  const want = Math.min(n, CHUNK) * size;
  const buf = scratch && scratch.byteLength >= want ? scratch : new Uint8Array(want);
  for (let i0 = 0; i0 < n; i0 += CHUNK) {
    const m = Math.min(CHUNK, n - i0);
    const piece = buf.subarray(0, m * size);
    await f.read(piece, info.begin + i0 * size);
    take(piece, i0);
  }
}

export function bytesOf(dtype: DType): number {
  return DTYPE_BYTES[dtype];
}

/** Convert n elements of a checkpoint dtype (raw little-endian bytes) to float32. */
export function toFloat32(bytes: Uint8Array, dtype: DType, out: Float32Array, outOffset = 0): void {
  if (dtype === 'F32') {
    new Uint8Array(out.buffer, out.byteOffset + outOffset * 4, bytes.byteLength).set(bytes);
    return;
  }
  const n = bytes.byteLength / 2;
  const u16 = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
  if (dtype === 'BF16') {
    const u32 = new Uint32Array(out.buffer, out.byteOffset + outOffset * 4, n);
    for (let i = 0; i < n; i++) u32[i] = u16[i]! << 16;
  } else {
    for (let i = 0; i < n; i++) out[outOffset + i] = fromHalfBits(u16[i]!);
  }
}
