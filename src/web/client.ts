/**
 * The page's side of the generation worker: load a model in a Web Worker and stream generations from
 * it, so the page never blocks on a forward pass.
 *
 *   const w = await KiviWorker.load(new URL('/models/llama-28m-gqa/', location.href));
 *   for await (const c of w.generate('Once upon a time', { kv: 'kivi2', maxTokens: 32 })) out.append(c.text);
 */

import type { BackendChoice } from '../kernels/index.js';
import { KiviError } from '../util/errors.js';
import type { FromWorker, ModelInfo, RunResult, RunStats, ToWorker, WorkerGenerateOptions } from './protocol.js';

export interface WorkerChunk {
  token: number | null;
  text: string;
  stats: RunStats;
}

export interface KiviWorkerOptions {
  /** The worker script (default: kivi-worker.js beside this module). */
  workerUrl?: string | URL;
  /** Compute back end inside the worker (default 'auto'). */
  backend?: BackendChoice;
  /** Threads for the wasm back end (default: the browser's core count). */
  threads?: number;
  /** Weight bytes read so far and in all. */
  onProgress?: (done: number, total: number) => void;
}

interface Listener {
  event(m: FromWorker): void;
}

export class KiviWorker {
  private nextId = 1;
  private readonly listeners = new Map<number, Listener>();

  private constructor(
    private readonly worker: Worker,
    readonly info: ModelInfo,
  ) {
    worker.addEventListener('message', (e: MessageEvent<FromWorker>) => {
      const m = e.data;
      if ('id' in m && m.id !== undefined) this.listeners.get(m.id)?.event(m);
    });
    // A worker that dies (out of memory, a crash) ends every running generation with an error.
    worker.addEventListener('error', (e: ErrorEvent) => {
      for (const [id, l] of this.listeners) l.event({ type: 'error', id, message: `the kivi worker failed: ${e.message || 'script error'}`, kivi: false });
    });
  }

  /** Start a worker and load the model at `url` (a URL base holding config.json, tokenizer.json, safetensors). */
  static load(url: string | URL, opts: KiviWorkerOptions = {}): Promise<KiviWorker> {
    const worker = new Worker(opts.workerUrl ?? new URL('./kivi-worker.js', import.meta.url), { type: 'module' });
    return new Promise<KiviWorker>((resolve, reject) => {
      const onMessage = (e: MessageEvent<FromWorker>) => {
        const m = e.data;
        if (m.type === 'progress') opts.onProgress?.(m.done, m.total);
        else if (m.type === 'loaded' || (m.type === 'error' && m.id === undefined)) {
          worker.removeEventListener('message', onMessage);
          worker.removeEventListener('error', onError);
          if (m.type === 'loaded') resolve(new KiviWorker(worker, m.info));
          else {
            worker.terminate();
            reject(m.kivi ? new KiviError(m.message) : new Error(m.message));
          }
        }
      };
      const onError = (e: ErrorEvent) => {
        worker.terminate();
        reject(new Error(`the kivi worker failed to start: ${e.message || 'script error'}`));
      };
      worker.addEventListener('message', onMessage);
      worker.addEventListener('error', onError);
      worker.postMessage({
        type: 'load',
        url: new URL(String(url), globalThis.location?.href).href,
        backend: opts.backend,
        threads: opts.threads,
      } satisfies ToWorker);
    });
  }

  /**
   * Stream a generation; the iterator's return value is the result. Breaking out of the loop, or
   * aborting `signal`, cancels it in the worker (its cache is freed at once).
   */
  async *generate(prompt: string | number[], opts: WorkerGenerateOptions & { signal?: AbortSignal } = {}): AsyncGenerator<WorkerChunk, RunResult, void> {
    const { signal, ...options } = opts;
    const id = this.nextId++;
    const queue: FromWorker[] = [];
    let wake: (() => void) | null = null;
    this.listeners.set(id, {
      event: (m) => {
        queue.push(m);
        wake?.();
        wake = null;
      },
    });
    const cancel = () => this.post({ type: 'cancel', id });
    signal?.addEventListener('abort', cancel, { once: true });
    let finished = false;
    try {
      this.post({ type: 'generate', id, prompt, options });
      for (;;) {
        while (queue.length > 0) {
          const m = queue.shift()!;
          if (m.type === 'token') yield { token: m.token, text: m.text, stats: m.stats };
          else if (m.type === 'done') {
            finished = true;
            return m.result;
          } else if (m.type === 'error') {
            finished = true;
            throw m.kivi ? new KiviError(m.message) : new Error(m.message);
          }
        }
        await new Promise<void>((resolve) => (wake = resolve));
      }
    } finally {
      if (!finished) cancel();
      signal?.removeEventListener('abort', cancel);
      this.listeners.delete(id);
    }
  }

  /** Generate to the end and return the result. */
  async complete(prompt: string | number[], opts: WorkerGenerateOptions & { signal?: AbortSignal } = {}): Promise<RunResult> {
    const it = this.generate(prompt, opts);
    for (;;) {
      const r = await it.next();
      if (r.done) return r.value;
    }
  }

  /** Stop the worker (every running generation ends with it). */
  terminate(): void {
    this.worker.terminate();
  }

  private post(m: ToWorker): void {
    this.worker.postMessage(m);
  }
}
