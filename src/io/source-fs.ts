/** Node's byte source: a model directory on the filesystem, read in ranges through file descriptors. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KiviError } from '../util/errors.js';
import type { ByteSource, RandomAccess } from './source.js';

class FsFile implements RandomAccess {
  constructor(
    readonly where: string,
    private readonly handle: fs.promises.FileHandle,
    readonly size: number,
  ) {}

  async read(dst: Uint8Array, position: number): Promise<void> {
    let done = 0;
    while (done < dst.length) {
      const { bytesRead } = await this.handle.read(dst, done, dst.length - done, position + done);
      if (bytesRead === 0) throw new KiviError('unexpected end of file while reading tensor data');
      done += bytesRead;
    }
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

export class FsSource implements ByteSource {
  constructor(readonly where: string) {
    if (!fs.existsSync(where)) throw new KiviError(`model directory ${where} does not exist`);
    if (!fs.statSync(where).isDirectory()) throw new KiviError(`${where} is not a directory`);
  }

  locate(name: string): string {
    return path.join(this.where, name);
  }

  /** The path of `name` if it exists; a KiviError if it is there but not a file (a directory, say). */
  private existing(name: string): string | undefined {
    const file = this.locate(name);
    const st = fs.statSync(file, { throwIfNoEntry: false });
    if (!st) return undefined;
    if (!st.isFile()) throw new KiviError(`${file} is not a file${st.isDirectory() ? ' (it is a directory)' : ''}`);
    return file;
  }

  async readText(name: string): Promise<string | undefined> {
    const file = this.existing(name);
    if (file === undefined) return undefined;
    try {
      return await fs.promises.readFile(file, 'utf8');
    } catch (e) {
      throw new KiviError(`cannot read ${file}: ${(e as Error).message}`);
    }
  }

  async open(name: string): Promise<RandomAccess | undefined> {
    const file = this.existing(name);
    if (file === undefined) return undefined;
    let handle: fs.promises.FileHandle;
    try {
      handle = await fs.promises.open(file, 'r');
    } catch {
      throw new KiviError(`cannot open ${file}`);
    }
    try {
      return new FsFile(file, handle, (await handle.stat()).size);
    } catch (e) {
      await handle.close();
      throw e;
    }
  }
}

export function fsSource(dir: string): FsSource {
  return new FsSource(dir);
}
