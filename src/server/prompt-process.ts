/**
 * The server's prompt process (a forked Node child): renders the model's chat template and tokenizes
 * prompts, so neither an untrusted template nor a megabyte of text blocks the event loop that streams
 * tokens. A separate process rather than a worker thread because V8 may abort the whole process when one
 * huge allocation (a template's `range(100000000)`) passes an isolate's heap limit: here that ends this
 * child alone. The main side (prompt-worker.ts) bounds each job in time and the child in memory.
 */
import { Template } from '@huggingface/jinja';
import { Tokenizer, type TokenizerSource } from '../tokenizer/tokenizer.js';

export interface PromptProcessData {
  tokenizer: TokenizerSource;
  template: string | undefined;
  /** Longest rendered text accepted, in UTF-16 code units. */
  maxRenderChars: number;
}

export type PromptJob =
  | { id: number; type: 'render'; context: Record<string, unknown> }
  | { id: number; type: 'encode'; text: string; bos: boolean | undefined };

/** The first message the child gets: what it serves. */
export interface PromptInit {
  type: 'init';
  data: PromptProcessData;
}

export type PromptReply = { id: number; text: string } | { id: number; ids: Uint32Array } | { id: number; error: 'template' | 'too-large'; message: string };

let tokenizer: Tokenizer | undefined;
let template: Template | undefined;
let maxRenderChars = 0;

function reply(r: PromptReply): void {
  process.send?.(r);
}

function handle(job: PromptJob): void {
  if (job.type === 'encode') {
    reply({ id: job.id, ids: Uint32Array.from(tokenizer!.encode(job.text, { bos: job.bos })) });
    return;
  }
  let text: string;
  try {
    if (!template) throw new Error('no chat template');
    text = template.render(job.context);
  } catch (e) {
    // Templates reject message lists they cannot format (raise_exception), e.g. roles out of order.
    reply({ id: job.id, error: 'template', message: (e as Error)?.message ?? String(e) });
    return;
  }
  if (text.length > maxRenderChars) {
    reply({ id: job.id, error: 'too-large', message: `${text.length} characters` });
    return;
  }
  reply({ id: job.id, text });
}

process.on('message', (m: PromptInit | PromptJob) => {
  if (m.type === 'init') {
    tokenizer = Tokenizer.fromSource(m.data.tokenizer);
    template = m.data.template !== undefined ? new Template(m.data.template) : undefined;
    maxRenderChars = m.data.maxRenderChars;
    return;
  }
  handle(m);
});
// The server went away (exit, crash, SIGKILL): nothing is left to serve.
process.on('disconnect', () => process.exit(0));
