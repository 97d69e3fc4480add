/**
 * Prompt work off the event loop: one child process (prompt-process.ts) renders chat templates and
 * tokenizes, one job at a time in arrival order. A model's chat template is untrusted input: each render
 * gets a deadline, its output a size bound and the process a heap limit; a render that breaks any of them
 * is answered with an error, the process is replaced, and the jobs behind it go on in the new one.
 */
import { type ChildProcess, fork } from 'node:child_process';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import { KiviError } from '../util/errors.js';
import type { PromptInit, PromptJob, PromptProcessData, PromptReply } from './prompt-process.js';
import { RequestError } from './schemas.js';

export interface PromptWorkerOptions {
  /** Most milliseconds one template render may take (default 2000). */
  renderDeadlineMs?: number;
  /** Longest rendered prompt in characters (default 8 Mi). */
  maxRenderChars?: number;
  /** Heap limit of the prompt process in MiB (default 512): a template that allocates without end stops there. */
  heapMiB?: number;
  /** Most jobs waiting for the prompt process (default 64); more are refused with a 429. */
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
  private worker: ChildProcess | null = null;
  private readonly queue: Pending[] = [];
  private current: Pending | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private nextId = 1;
  private closed = false;
  private readonly deadlineMs: number;
  private readonly data: PromptProcessData;
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
    if (!('ids' in r)) throw new Error('prompt process: encode answered without ids');
    return Array.from(r.ids);
  }

  /** Stop the process; waiting jobs fail with a 503. */
  async close(): Promise<void> {
    this.closed = true;
    for (const p of this.queue.splice(0)) p.reject(new KiviError('the server is shutting down', 503));
    this.current?.reject(new KiviError('the server is shutting down', 503));
    this.current = null;
    if (this.timer) clearTimeout(this.timer);
    const w = this.worker;
    this.worker = null;
    if (w) await stop(w);
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

  private spawn(): ChildProcess {
    const w = fork(fileURLToPath(new URL('./prompt-process.js', import.meta.url)), [], {
      execArgv: [`--max-old-space-size=${this.heapMiB}`, '--max-semi-space-size=16'],
      // Typed arrays (token ids) cross as such; stderr is read to tell an out-of-memory abort from a crash.
      serialization: 'advanced',
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    });
    let stderr = '';
    w.stderr?.setEncoding('utf8');
    w.stderr?.on('data', (d: string) => {
      if (stderr.length < 4096) stderr += d;
    });
    // An idle child never keeps the server alive (SIGTERM, the end of a test); it exits when the server does.
    hold(w, false);
    w.on('message', (r: PromptReply) => {
      const p = this.current;
      if (!p || p.job.id !== r.id) return;
      this.finish();
      p.resolve(r);
    });
    w.on('error', (e: Error) => this.fail(w, e));
    w.on('exit', (code, signal) => {
      const oom = /heap limit|out of memory/i.test(stderr);
      this.fail(w, oom ? new OutOfMemory() : new Error(`prompt process exited with ${signal ?? `code ${code}`}`));
    });
    w.send({ type: 'init', data: this.data } satisfies PromptInit);
    return w;
  }

  /** Start the next job if the process is idle. */
  private pump(): void {
    if (this.current || this.closed) return;
    const p = this.queue.shift();
    if (!p) return;
    this.current = p;
    this.worker ??= this.spawn();
    // A job in flight keeps the event loop alive until its answer comes.
    hold(this.worker, true);
    this.worker.send(p.job);
    // Tokenizing is bounded by the request body; only the untrusted template gets a deadline.
    if (p.job.type === 'render') {
      this.timer = setTimeout(
        () => this.kill(new TemplateFailed(`the model's chat template did not finish rendering within ${this.deadlineMs / 1000} s`)),
        this.deadlineMs,
      );
    }
  }

  private finish(): void {
    if (this.worker) hold(this.worker, false);
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.current = null;
    queueMicrotask(() => this.pump());
  }

  /** The current job failed with the process: answer it, replace the process, go on with the queue. */
  private kill(err: unknown): void {
    const p = this.current;
    const w = this.worker;
    this.worker = null;
    if (w) {
      w.removeAllListeners('exit');
      w.removeAllListeners('error');
      w.removeAllListeners('message');
      void stop(w);
    }
    this.finish();
    p?.reject(err);
  }

  private fail(w: ChildProcess, e: Error): void {
    if (w !== this.worker) return;
    const err =
      e instanceof OutOfMemory
        ? new TemplateFailed(`the model's chat template ran out of memory (the prompt process's limit is ${this.heapMiB} MiB)`)
        : this.current?.job.type === 'render'
          ? new TemplateFailed(`the model's chat template failed: ${e.message}`)
          : e;
    this.kill(err);
  }
}

class OutOfMemory extends Error {}

function hold(w: ChildProcess, on: boolean): void {
  if (on) {
    w.ref();
    w.channel?.ref();
    (w.stderr as Socket | null)?.ref();
  } else {
    w.unref();
    w.channel?.unref();
    (w.stderr as Socket | null)?.unref();
  }
}

/** Kill a prompt process and wait for it to be gone (a render in a tight loop never reads a polite request). */
function stop(w: ChildProcess): Promise<void> {
  if (w.exitCode !== null || w.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    w.ref();
    w.once('exit', () => resolve());
    w.kill('SIGKILL');
  });
}
