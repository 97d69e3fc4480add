/**
 * Prompt work off the event loop: one worker thread (prompt-thread.ts) renders chat templates and
 * tokenizes, one job at a time in arrival order. A model's chat template is untrusted input: each render
 * gets a deadline, its output a size bound and the thread a heap limit; a render that breaks any of them
 * is answered with an error, the thread is replaced, and the jobs behind it go on in the new one.
 */
import { Worker } from 'node:worker_threads';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import { KiviError } from '../util/errors.js';
import type { PromptJob, PromptReply, PromptThreadData } from './prompt-thread.js';
import { RequestError } from './schemas.js';

export interface PromptWorkerOptions {
  /** Most milliseconds one template render may take (default 2000). */
  renderDeadlineMs?: number;
  /** Longest rendered prompt in characters (default 8 Mi). */
  maxRenderChars?: number;
  /** Heap limit of the thread in MiB (default 512): a template that allocates without end stops there. */
  heapMiB?: number;
  /** Most jobs waiting for the thread (default 64); more are refused with a 429. */
  maxWaiting?: number;
}

/** A render the template itself refused (raise_exception, a bad expression): the messages' fault. */
export class TemplateRejected extends KiviError {}

/**
 * A template that ran too long, too large or out of memory. The request is valid and the template is
 * part of the model the server was started with, so it is the server's fault: 500, code
 * chat_template_error (a 4xx would tell the client to change a request that is not wrong).
 */
export class TemplateFailed extends RequestError {
  constructor(message: string) {
    super(message, 500, null, 'chat_template_error');
  }
}

type JobBody = PromptJob extends infer J ? (J extends PromptJob ? Omit<J, 'id'> : never) : never;

interface Pending {
  job: PromptJob;
  resolve: (r: PromptReply) => void;
  reject: (e: unknown) => void;
}

export class PromptWorker {
  private worker: Worker | null = null;
  private readonly queue: Pending[] = [];
  private current: Pending | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private nextId = 1;
  private closed = false;
  private readonly deadlineMs: number;
  private readonly data: PromptThreadData;
  private readonly heapMiB: number;
  private readonly maxWaiting: number;

  constructor(tokenizer: Tokenizer, template: string | undefined, opts: PromptWorkerOptions = {}) {
    this.deadlineMs = opts.renderDeadlineMs ?? 2000;
    this.heapMiB = opts.heapMiB ?? 512;
    this.maxWaiting = opts.maxWaiting ?? 64;
    this.data = { tokenizer: tokenizer.source, template, maxRenderChars: opts.maxRenderChars ?? 8 * 2 ** 20 };
  }

  /** Render the chat template with `context`; rejects with TemplateRejected (400) or TemplateFailed (500). */
  async render(context: Record<string, unknown>): Promise<string> {
    const r = await this.run({ type: 'render', context });
    if ('text' in r) return r.text;
    if ('error' in r && r.error === 'too-large') {
      throw new TemplateFailed(`the model's chat template produced a prompt of ${r.message}, more than the limit of ${this.data.maxRenderChars}`);
    }
    throw new TemplateRejected(`the chat template rejected the messages: ${'message' in r ? r.message : 'no text'}`, 400);
  }

  /** Text → token ids (BOS as the tokenizer config says unless `bos` is given). */
  async encode(text: string, bos?: boolean): Promise<number[]> {
    const r = await this.run({ type: 'encode', text, bos });
    if (!('ids' in r)) throw new Error('prompt thread: encode answered without ids');
    return Array.from(r.ids);
  }

  /** Stop the thread; waiting jobs fail with a 503. */
  async close(): Promise<void> {
    this.closed = true;
    for (const p of this.queue.splice(0)) p.reject(new KiviError('the server is shutting down', 503));
    this.current?.reject(new KiviError('the server is shutting down', 503));
    this.current = null;
    if (this.timer) clearTimeout(this.timer);
    const w = this.worker;
    this.worker = null;
    await w?.terminate();
  }

  private run(body: JobBody): Promise<PromptReply> {
    if (this.closed) return Promise.reject(new KiviError('the server is shutting down', 503));
    if (this.queue.length >= this.maxWaiting) {
      return Promise.reject(new KiviError(`server busy: ${this.queue.length} prompts are already waiting to be prepared; retry later`, 429));
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ job: { ...body, id: this.nextId++ } as PromptJob, resolve, reject });
      this.pump();
    });
  }

  private spawn(): Worker {
    const w = new Worker(new URL('./prompt-thread.js', import.meta.url), {
      workerData: this.data,
      resourceLimits: { maxOldGenerationSizeMb: this.heapMiB, maxYoungGenerationSizeMb: 64 },
      stdout: true,
      stderr: true,
    });
    // The thread never keeps the process alive (SIGTERM, the end of a test).
    w.unref();
    w.on('message', (r: PromptReply) => {
      const p = this.current;
      if (!p || p.job.id !== r.id) return;
      this.finish();
      p.resolve(r);
    });
    w.on('error', (e: Error) => this.fail(w, e));
    w.on('exit', (code) => this.fail(w, new Error(`prompt thread exited with code ${code}`)));
    return w;
  }

  /** Start the next job if the thread is idle. */
  private pump(): void {
    if (this.current || this.closed) return;
    const p = this.queue.shift();
    if (!p) return;
    this.current = p;
    this.worker ??= this.spawn();
    this.worker.postMessage(p.job);
    // Tokenizing is bounded by the request body; only the untrusted template gets a deadline.
    if (p.job.type === 'render') {
      this.timer = setTimeout(
        () => this.kill(new TemplateFailed(`the model's chat template did not finish rendering within ${this.deadlineMs / 1000} s`)),
        this.deadlineMs,
      );
    }
  }

  private finish(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.current = null;
    queueMicrotask(() => this.pump());
  }

  /** The current job failed with the thread: answer it, replace the thread, go on with the queue. */
  private kill(err: unknown): void {
    const p = this.current;
    const w = this.worker;
    this.worker = null;
    if (w) {
      w.removeAllListeners('exit');
      w.removeAllListeners('error');
      w.removeAllListeners('message');
      void w.terminate();
    }
    this.finish();
    p?.reject(err);
  }

  private fail(w: Worker, e: Error): void {
    if (w !== this.worker) return;
    const code = (e as NodeJS.ErrnoException).code;
    const err =
      code === 'ERR_WORKER_OUT_OF_MEMORY'
        ? new TemplateFailed(`the model's chat template ran out of memory (the prompt thread's limit is ${this.heapMiB} MiB)`)
        : this.current?.job.type === 'render'
          ? new TemplateFailed(`the model's chat template failed: ${e.message}`)
          : e;
    this.kill(err);
  }
}
