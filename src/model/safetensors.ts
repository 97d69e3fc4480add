/**
 * safetensors reader: an 8-byte little-endian header length, a JSON header, then raw tensor bytes.
 * Only the header is parsed as text; tensor bytes are read straight into typed arrays, one tensor at a
 * time, so no file is ever held whole in memory.
 */
import * as fs from 'node:fs';
import { KiviError } from '../util/errors.js';
import { fromHalfBits } from '../quant/float16.js';

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
  file: string;
}

/** Parse a safetensors header and check every entry against the file's size. */
export function readHeader(file: string): Map<string, TensorInfo> {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch {
    throw new KiviError(`cannot open ${file}`);
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (size < 8) throw new KiviError(`${file}: truncated safetensors file (${size} bytes)`);
    const lenBuf = Buffer.alloc(8);
    fs.readSync(fd, lenBuf, 0, 8, 0);
    const headerLen = Number(lenBuf.readBigUInt64LE(0));
    if (headerLen > size - 8 || headerLen > MAX_HEADER) {
      throw new KiviError(`${file}: header length ${headerLen} runs past the end of the file (${size} bytes)`);
    }
    const headerBuf = Buffer.alloc(headerLen);
    fs.readSync(fd, headerBuf, 0, headerLen, 8);
    let header: unknown;
    try {
      header = JSON.parse(headerBuf.toString('utf8'));
    } catch {
      throw new KiviError(`${file}: malformed safetensors header (bad JSON)`);
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) {
      throw new KiviError(`${file}: malformed safetensors header (not an object)`);
    }
    const dataStart = 8 + headerLen;
    const out = new Map<string, TensorInfo>();
    for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') continue;
      const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (typeof e !== 'object' || e === null) throw new KiviError(`${file}: tensor "${name}" has a malformed entry`);
      if (typeof e.dtype !== 'string' || !(e.dtype in DTYPE_BYTES)) {
        throw new KiviError(`${file}: tensor "${name}" has unsupported dtype ${JSON.stringify(e.dtype)} (supported: F32, F16, BF16)`);
      }
      const dtype = e.dtype as DType;
      const shape = e.shape;
      if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
        throw new KiviError(`${file}: tensor "${name}" has a malformed shape`);
      }
      const offs = e.data_offsets;
      if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isInteger(d) && d >= 0) || offs[0] > offs[1]) {
        throw new KiviError(`${file}: tensor "${name}" has malformed data_offsets`);
      }
      const begin = dataStart + (offs[0] as number);
      const end = dataStart + (offs[1] as number);
      if (end > size) {
        throw new KiviError(`${file}: tensor "${name}" data [${offs[0]}, ${offs[1]}) lies outside the file`);
      }
      const count = (shape as number[]).reduce((a, b) => a * b, 1);
      if (count * DTYPE_BYTES[dtype] !== end - begin) {
        throw new KiviError(`${file}: tensor "${name}" byte length ${end - begin} does not match shape [${shape.join(', ')}] × ${dtype}`);
      }
      out.set(name, { name, dtype, shape: shape as number[], begin, end, file });
    }
    return out;
  } finally {
    fs.closeSync(fd);
  }
}

/** Read one tensor and convert it to float32 (bf16 and f16 convert exactly) into `out`. */
export function readTensorInto(info: TensorInfo, out: Float32Array): void {
  const n = info.shape.reduce((a, b) => a * b, 1);
  if (out.length !== n) throw new Error(`readTensorInto: ${info.name} needs ${n} floats, got ${out.length}`);
  const bytes = info.end - info.begin;
  const fd = fs.openSync(info.file, 'r');
  try {
    if (info.dtype === 'F32') {
      const dst = new Uint8Array(out.buffer, out.byteOffset, bytes);
      readFully(fd, dst, info.begin);
      return;
    }
    // Convert in chunks to bound the temporary buffer.
    const CHUNK = 1 << 20;
    const tmp = new Uint16Array(Math.min(n, CHUNK));
    const tmpBytes = new Uint8Array(tmp.buffer);
    const u32 = new Uint32Array(out.buffer, out.byteOffset, n);
    for (let i0 = 0; i0 < n; i0 += CHUNK) {
      const m = Math.min(CHUNK, n - i0);
      readFully(fd, tmpBytes.subarray(0, m * 2), info.begin + i0 * 2);
      if (info.dtype === 'BF16') {
        for (let i = 0; i < m; i++) u32[i0 + i] = tmp[i]! << 16;
      } else {
        for (let i = 0; i < m; i++) out[i0 + i] = fromHalfBits(tmp[i]!);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}

function readFully(fd: number, dst: Uint8Array, position: number): void {
  let done = 0;
  while (done < dst.length) {
    const n = fs.readSync(fd, dst, done, dst.length - done, position + done);
    if (n === 0) throw new KiviError('unexpected end of file while reading tensor data');
    done += n;
  }
}

