/**
 * One completions or chat request from body to response: validate, tokenize, wait for admission, then
 * answer with one JSON body or a server-sent event stream. The request's AbortSignal fires on client
 * disconnect and on timeout; either cancels the sequence (its cache is freed at once) or takes it out of
 * the admission queue.
 */
import type { ServerResponse } from 'node:http';
import type { FastifyReply } from 'fastify';
import type { KiviModel } from '../api.js';
import { type Sequence, checkContext } from '../engine/batch.js';
import type { GenerateOptions, GenerateResult } from '../engine/generate.js';
import type { Scheduler } from './scheduler.js';
import type { ChatFormatter } from './chat.js';
import type { ServerStats, Timing } from './stats.js';
import { ChatRequest, CompletionRequest, RequestError, messageText, parseBody, singlePrompt } from './schemas.js';
import { type Endpoint, ResponseId, errorBody, usage } from './openai.js';
import { KiviError } from '../util/errors.js';

export interface GenerationContext {
  model: KiviModel;
  /** The name clients must send as `model`. */
  modelName: string;
  scheduler: Scheduler;
  chat: ChatFormatter;
  stats: ServerStats;
  /** Per-request limit, from arrival to the last token. */
  timeoutMs: number;
}

/** A validated request, ready to run. */
interface Job {
  ids: number[];
  opts: GenerateOptions & { maxTokens: number };
  stream: boolean;
  includeUsage: boolean;
}

/** Why a request's signal fired. */
const CLIENT_GONE = new Error('client disconnected');
const TIMED_OUT = new Error('request timed out');

type Outcome = 'ok' | 'invalid' | 'rejected' | 'timeout' | 'cancelled' | 'error';

function outcomeOf(status: number): Outcome {
  if (status === 429) return 'rejected';
  if (status === 408) return 'timeout';
  if (status >= 500) return 'error';
  return 'invalid';
}

function stopList(s: string | string[] | null | undefined): string[] {
  if (s === null || s === undefined) return [];
  return (typeof s === 'string' ? [s] : s).filter((x) => x.length > 0);
}

export function checkModelName(ctx: GenerationContext, name: string): void {
  if (name !== ctx.modelName) {
    throw new RequestError(`the model "${name}" does not exist; this server serves "${ctx.modelName}"`, 404, 'model', 'model_not_found');
  }
}

/** Checks that need the model: token ids in the vocabulary (the forward pass would fail the whole batch), the context. */
function checkPrompt(ctx: GenerationContext, ids: number[], maxTokens: number, promptParam: string): void {
  const { vocabSize: V, maxPositions: C } = ctx.model.config;
  const bad = ids.find((t) => t >= V);
  if (bad !== undefined) throw new RequestError(`token id ${bad} is outside the vocabulary [0, ${V})`, 400, promptParam);
  try {
    checkContext(ids.length, maxTokens, C);
  } catch (e) {
    if (!(e instanceof KiviError)) throw e;
    if (ids.length === 0) throw new RequestError(e.message, 400, promptParam);
    throw new RequestError(e.message, 400, ids.length >= C ? promptParam : 'max_tokens', 'context_length_exceeded');
  }
}

function sampling(b: CompletionRequest | ChatRequest): Omit<GenerateOptions, 'maxTokens' | 'stop'> {
  // OpenAI's defaults: temperature 1, top_p 1.
  return { temperature: b.temperature ?? 1, topP: b.top_p ?? 1, topK: b.top_k ?? 0, seed: b.seed ?? undefined };
}

function completionJob(ctx: GenerationContext, raw: unknown): Job {
  const b = parseBody(CompletionRequest, raw);
  checkModelName(ctx, b.model);
  const p = singlePrompt(b.prompt);
  const ids = typeof p === 'string' ? ctx.model.encode(p) : p;
  // OpenAI's default for completions.
  const maxTokens = b.max_tokens ?? 16;
  checkPrompt(ctx, ids, maxTokens, 'prompt');
  return {
    ids, opts: { ...sampling(b), maxTokens, stop: stopList(b.stop) },
    stream: b.stream ?? false, includeUsage: b.stream_options?.include_usage ?? false,
  };
}

function chatJob(ctx: GenerationContext, raw: unknown): Job {
  const b = parseBody(ChatRequest, raw);
  checkModelName(ctx, b.model);
  const prompt = ctx.chat.prompt(b.messages.map((m) => ({ role: m.role, content: messageText(m.content), ...(m.name ? { name: m.name } : {}) })));
  const ids = prompt.ids;
  // Without a limit a chat answer may run to the end of the context (OpenAI's behaviour); the reservation follows.
  const maxTokens = b.max_completion_tokens ?? b.max_tokens ?? Math.max(1, ctx.model.config.maxPositions - ids.length);
  checkPrompt(ctx, ids, maxTokens, 'messages');
  return {
    ids, opts: { ...sampling(b), maxTokens, stop: [...stopList(b.stop), ...prompt.stop] },
    stream: b.stream ?? false, includeUsage: b.stream_options?.include_usage ?? false,
  };
}

/** Handle POST /v1/completions or /v1/chat/completions. Throws KiviErrors before any byte is sent. */
export async function handleGeneration(endpoint: Endpoint, ctx: GenerationContext, body: unknown, reply: FastifyReply): Promise<unknown> {
  const arrived = performance.now();
  let outcome: Outcome = 'error';
  const res = reply.raw;
  const ac = new AbortController();
  const onClose = () => {
    if (!res.writableFinished) ac.abort(CLIENT_GONE);
  };
  res.on('close', onClose);
  const timer = setTimeout(() => ac.abort(TIMED_OUT), ctx.timeoutMs);
  try {
    const job = endpoint === 'chat' ? chatJob(ctx, body) : completionJob(ctx, body);
    let seq: Sequence;
    try {
      seq = await ctx.scheduler.submit(job.ids, { ...job.opts, signal: ac.signal });
    } catch (e) {
      if (e === CLIENT_GONE) {
        outcome = 'cancelled';
        reply.hijack();
        return;
      }
      if (e === TIMED_OUT) throw new KiviError(`timed out after ${ctx.timeoutMs / 1000} s waiting for KV cache memory`, 408);
      throw e;
    }
    ctx.stats.promptTokens += job.ids.length;
    const id = new ResponseId(endpoint, ctx.modelName);
    const timing: Timing = { arrived, first: 0, last: 0 };
    if (job.stream) {
      reply.hijack();
      outcome = await streamEvents(ctx, job, seq, id, ac.signal, timing, res);
      return;
    }
    const r = await drain(seq, timing);
    if (r.finishReason === 'abort') {
      if (ac.signal.reason === CLIENT_GONE) {
        outcome = 'cancelled';
        reply.hijack();
        return;
      }
      throw abortError(ac.signal, ctx);
    }
    outcome = 'ok';
    ctx.stats.observe(r, timing);
    return id.full(r.text, r.finishReason, usage(r.promptTokens, r.ids.length));
  } catch (e) {
    outcome = e instanceof KiviError ? outcomeOf(e.status) : 'error';
    throw e;
  } finally {
    clearTimeout(timer);
    res.off('close', onClose);
    ctx.stats.requests.inc({ endpoint, outcome });
  }
}

/** Why an aborted sequence stopped: its timeout, or (signal not fired) the server shutting down. */
function abortError(signal: AbortSignal, ctx: GenerationContext): KiviError {
  if (signal.reason === TIMED_OUT) return new KiviError(`timed out after ${ctx.timeoutMs / 1000} s`, 408);
  return new KiviError('the server is shutting down', 503);
}

async function drain(seq: Sequence, timing: Timing): Promise<GenerateResult> {
  const it = seq.stream();
  for (;;) {
    const r = await it.next();
    if (r.done) return r.value;
    if (r.value.token !== null) mark(timing);
  }
}

function mark(timing: Timing): void {
  timing.last = performance.now();
  if (timing.first === 0) timing.first = timing.last;
}

/** Server-sent events: one `data:` line per chunk, then the finish chunk, optional usage, `data: [DONE]`. */
async function streamEvents(
  ctx: GenerationContext, job: Job, seq: Sequence, id: ResponseId, signal: AbortSignal, timing: Timing, res: ServerResponse,
): Promise<Outcome> {
  const send = (obj: object | string) => {
    if (!res.destroyed) res.write(`data: ${typeof obj === 'string' ? obj : JSON.stringify(obj)}\n\n`);
  };
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive' });
  let first = true;
  let r: GenerateResult;
  try {
    const it = seq.stream();
    for (;;) {
      const n = await it.next();
      if (n.done) {
        r = n.value;
        break;
      }
      if (n.value.token !== null) mark(timing);
      // The first chat chunk carries the role, even when its text is empty.
      if (n.value.text !== '' || (first && id.endpoint === 'chat')) {
        send(id.chunk(n.value.text, null, first));
        first = false;
      }
    }
  } catch (e) {
    // The forward pass failed: a bug, reported in the stream since the status line is already sent.
    send(errorBody(500, `internal error: ${(e as Error)?.message ?? String(e)}`));
    send('[DONE]');
    res.end();
    return 'error';
  }
  let outcome: Outcome = 'ok';
  if (r.finishReason === 'abort') {
    if (signal.reason === CLIENT_GONE) {
      res.end();
      return 'cancelled';
    }
    const err = abortError(signal, ctx);
    send(errorBody(err.status, err.message));
    outcome = outcomeOf(err.status);
  } else {
    ctx.stats.observe(r, timing);
    if (first && id.endpoint === 'chat') send(id.chunk('', null, true));
    send(id.chunk('', r.finishReason));
    if (job.includeUsage) send(id.usageChunk(usage(r.promptTokens, r.ids.length)));
  }
  send('[DONE]');
  res.end();
  return outcome;
}
