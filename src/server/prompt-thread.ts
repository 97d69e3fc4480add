/**
 * The server's prompt thread (worker_threads): renders the model's chat template and tokenizes prompts,
 * so neither an untrusted template nor a megabyte of text blocks the event loop that streams tokens.
 * The main side (prompt-worker.ts) bounds each job in time and the thread in memory.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { Template } from '@huggingface/jinja';
import { Tokenizer, type TokenizerSource } from '../tokenizer/tokenizer.js';

export interface PromptThreadData {
  tokenizer: TokenizerSource;
  template: string | undefined;
  /** Longest rendered text accepted, in UTF-16 code units. */
  maxRenderChars: number;
}

export type PromptJob =
  | { id: number; type: 'render'; context: Record<string, unknown> }
  | { id: number; type: 'encode'; text: string; bos: boolean | undefined };

export type PromptReply = { id: number; text: string } | { id: number; ids: Uint32Array } | { id: number; error: 'template' | 'too-large'; message: string };

const data = workerData as PromptThreadData;
const tokenizer = Tokenizer.fromSource(data.tokenizer);
const template = data.template !== undefined ? new Template(data.template) : undefined;
const port = parentPort!;

port.on('message', (job: PromptJob) => {
  if (job.type === 'encode') {
    const ids = Uint32Array.from(tokenizer.encode(job.text, { bos: job.bos }));
    port.postMessage({ id: job.id, ids } satisfies PromptReply, [ids.buffer]);
    return;
  }
  let text: string;
  try {
    if (!template) throw new Error('no chat template');
    text = template.render(job.context);
  } catch (e) {
    // Templates reject message lists they cannot format (raise_exception), e.g. roles out of order.
    port.postMessage({ id: job.id, error: 'template', message: (e as Error)?.message ?? String(e) } satisfies PromptReply);
    return;
  }
  if (text.length > data.maxRenderChars) {
    port.postMessage({ id: job.id, error: 'too-large', message: `${text.length} characters` } satisfies PromptReply);
    return;
  }
  port.postMessage({ id: job.id, text } satisfies PromptReply);
});
