/**
 * Where a model's files come from. The loader (load.ts, weights.ts, safetensors.ts, the tokenizer)
 * reads only through this seam, so one code path loads from the Node filesystem (source-fs.ts) or
 * from a URL base with fetch (source-url.ts). Nothing here imports Node modules: browsers load it too.
 */
import { KiviError } from '../util/errors.js';

/** A binary file opened for ranged reads. */
export interface RandomAccess {
  /** The file's path or URL, for messages. */
  readonly where: string;
  readonly size: number;
  /** Fill `dst` with the bytes at [position, position + dst.length); a short file is a KiviError. */
  read(dst: Uint8Array, position: number): Promise<void>;
  close(): Promise<void>;
}

export interface ByteSource {
  /** The model directory or URL base, for messages. */
  readonly where: string;
  /** Where the file `name` (relative to the model) lives: a path or a URL, for messages. */
  locate(name: string): string;
  /** A small text file (JSON), or undefined when there is no such file. */
  readText(name: string): Promise<string | undefined>;
  /** Open a binary file for ranged reads, or undefined when there is no such file. */
  open(name: string): Promise<RandomAccess | undefined>;
}

/** Read and parse a JSON file; undefined when absent and not required. Messages match across sources. */
export async function readJson(source: ByteSource, name: string, opts: { required: boolean; missing?: string }): Promise<unknown> {
  const text = await source.readText(name);
  const where = source.locate(name);
  if (text === undefined) {
    if (opts.required) throw new KiviError(opts.missing ?? `missing ${where}`);
    return undefined;
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new KiviError(`${where}: malformed JSON`);
  }
}

/**
 * A file name that can only mean a file directly inside the model directory, on disk and as a URL:
 * not empty, no path separator (`/`, `\`), not `.` or `..`, no NUL or other control character, and no
 * URL scheme (`https:…`, `data:…`). Names come from the model's own files (the shard index), which are
 * untrusted: a name that escaped the directory would read another file, or send the caller's headers to
 * another host.
 */
export function isPlainFileName(name: string): boolean {
  return (
    name !== '' &&
    name !== '.' &&
    name !== '..' &&
    ![...name].some((c) => c === '/' || c === '\\' || c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f) &&
    !/^[a-z][a-z0-9+.-]*:/i.test(name)
  );
}

/** True for an http(s) URL (or a URL object), as opposed to a filesystem path. */
export function isUrl(location: string | URL): boolean {
  return location instanceof URL || /^https?:\/\//i.test(location);
}
