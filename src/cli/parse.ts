/** Strict flag-value parsers: a bad value is a one-line error naming the flag, never a silent NaN. */
import * as fs from 'node:fs';
import { InvalidArgumentError } from 'commander';
import { KiviError } from '../util/errors.js';

export function int(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (s: string): number => {
    if (!/^-?\d+$/.test(s.trim())) throw new InvalidArgumentError(`expected an integer, got "${s}"`);
    const n = Number(s);
    if (n < min || n > max) throw new InvalidArgumentError(`expected an integer in [${min}, ${max}], got ${n}`);
    return n;
  };
}

export function float(min: number, max: number, opts: { minExclusive?: boolean } = {}) {
  return (s: string): number => {
    const n = Number(s);
    if (s.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError(`expected a number, got "${s}"`);
    if (n < min || n > max || (opts.minExclusive && n === min)) {
      throw new InvalidArgumentError(`expected a number in ${opts.minExclusive ? '(' : '['}${min}, ${max}], got ${n}`);
    }
    return n;
  };
}

export function intList(min: number) {
  const one = int(min);
  return (s: string): number[] => s.split(',').map((x) => one(x));
}

export function floatList(min: number, max: number) {
  const one = float(min, max);
  return (s: string): number[] => s.split(',').map((x) => one(x));
}

export function stringList(s: string): string[] {
  const parts = s.split(',').map((x) => x.trim());
  if (parts.some((p) => p === '')) throw new InvalidArgumentError(`empty item in list "${s}"`);
  return parts;
}

/** Byte sizes: 123, 512KiB, 2GiB, 1.5GB, 800MB. */
export function bytes(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(|b|kb|kib|mb|mib|gb|gib|tb|tib)$/i.exec(s.trim());
  if (!m) throw new InvalidArgumentError(`expected a size like 2GiB or 500MB, got "${s}"`);
  const unit = m[2]!.toLowerCase();
  if ((unit === '' || unit === 'b') && !Number.isInteger(Number(m[1]))) {
    throw new InvalidArgumentError(`expected a whole number of bytes, got "${s}"`);
  }
  const mult: Record<string, number> = {
    '': 1,
    b: 1,
    kb: 1e3,
    kib: 1024,
    mb: 1e6,
    mib: 1024 ** 2,
    gb: 1e9,
    gib: 1024 ** 3,
    tb: 1e12,
    tib: 1024 ** 4,
  };
  const n = Math.round(Number(m[1]) * mult[unit]!);
  if (n <= 0) throw new InvalidArgumentError(`size must be positive, got "${s}"`);
  return n;
}

/** Read a JSON file, with one-line errors for a missing file or bad JSON. */
export function readJsonFile(file: string, what: string): unknown {
  const text = readTextFile(file, what);
  try {
    return JSON.parse(text);
  } catch {
    throw new KiviError(`${what} file ${file}: malformed JSON`);
  }
}

export function readTextFile(file: string, what: string): string {
  if (!fs.existsSync(file)) throw new KiviError(`${what} file ${file} does not exist`);
  if (!fs.statSync(file).isFile()) throw new KiviError(`${what} ${file} is not a file${fs.statSync(file).isDirectory() ? ' (it is a directory)' : ''}`);
  return fs.readFileSync(file, 'utf8');
}

export function tokenIdArray(x: unknown, file: string): number[] {
  if (!Array.isArray(x) || !x.every((t) => Number.isInteger(t) && t >= 0)) {
    throw new KiviError(`${file}: expected a JSON array of token ids`);
  }
  return x as number[];
}
