/**
 * One completions or chat request from body to response: validate, tokenize, wait for admission, then
 * answer with one JSON body or a server-sent event stream. The request's AbortSignal fires on client
 * disconnect and on timeout; either cancels the sequence (its cache is freed at once) or takes it out of
 * the admission queue.
 */
import type { ServerResponse } from 'node:http';
import type { FastifyReply } from 'fastify';
import type { KiviModel } from '../api.js';
import { checkContext, type Sequence } from '../engine/batch.js';
import type { GenerateOptions, GenerateResult } from '../engine/generate.js';
import { KiviError } from '../util/errors.js';
import type { ChatFormatter } from './chat.js';
import { type Endpoint, errorBody, ResponseId, usage } from './openai.js';
import type { PrefixCache } from './prefix-cache.js';
import type { Start } from './scheduler.js';
import { formatBytes, type Scheduler } from './scheduler.js';
import { ChatRequest, CompletionRequest, messageText, parseBody, RequestError, singlePrompt } from './schemas.js';
import type { ServerStats, Timing } from './stats.js';

export interface GenerationContext {
  model: KiviModel;
  /** The name clients must send as `model`. */
  modelName: string;
  scheduler: Scheduler;
  chat: ChatFormatter;
  stats: ServerStats;
  /** Per-request limit, from arrival to the last token. */
  timeoutMs: number;
  /** The prefix cache, if configured. */
  prefix: PrefixCache | null;
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

/** Checks that need the model: token ids in the vocabulary (the forward pass would fail the whole batch). */
function checkVocabulary(ctx: GenerationContext, ids: number[], promptParam: string): void {
  const V = ctx.model.config.vocabSize;
  const bad = ids.find((t) => t >= V);
  if (bad !== undefined) throw new RequestError(`token id ${bad} is outside the vocabulary [0, ${V})`, 400, promptParam);
}

/**
 * The request's token limit. One the client sent must fit the context as it is (its messages quote it).
 * Without one, the request gets the endpoint's default (`dflt`, or the rest of the context) cut to what
 * fits: the context and the server's whole KV budget. It then ends with finish_reason "length" when it
 * reaches that; no error quotes a limit the client did not send.
 */
function tokenLimit(
  ctx: GenerationContext,
  ids: number[],
  sent: { value: number | null | undefined; param: string },
  promptParam: string,
  dflt?: number,
): number {
  const C = ctx.model.config.maxPositions;
  if (ids.length === 0) throw new RequestError('empty prompt', 400, promptParam);
  if (sent.value !== null && sent.value !== undefined) {
    try {
      checkContext(ids.length, sent.value, C);
    } catch (e) {
      if (!(e instanceof KiviError)) throw e;
      throw new RequestError(e.message, 400, ids.length >= C ? promptParam : sent.param, 'context_length_exceeded');
    }
    return sent.value;
  }
  const room = C - ids.length;
  if (room < 1) {
    throw new RequestError(
      `the prompt is ${ids.length} tokens, which leaves no room to generate in the model's context of ${C}`,
      400,
      promptParam,
      'context_length_exceeded',
    );
  }
  const want = Math.min(dflt ?? room, room);
  const { scheduler } = ctx;
  const budget = scheduler.opts.budgetBytes;
  if (scheduler.reservation(ids.length, 1) > budget) {
    throw new RequestError(
      `a prompt of ${ids.length} tokens needs ${formatBytes(scheduler.reservation(ids.length, 1))} of KV cache, ` +
        `more than the server's whole budget of ${formatBytes(budget)}; shorten the prompt`,
      400,
      promptParam,
    );
  }
  // The reservation grows with the limit: the largest limit whose reservation fits the budget.
  let lo = 1;
  let hi = want;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (scheduler.reservation(ids.length, mid) <= budget) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

function sampling(b: CompletionRequest | ChatRequest): Omit<GenerateOptions, 'maxTokens' | 'stop'> {
  // OpenAI's defaults: temperature 1, top_p 1.
  return { temperature: b.temperature ?? 1, topP: b.top_p ?? 1, topK: b.top_k ?? 0, seed: b.seed ?? undefined };
}

async function completionJob(ctx: GenerationContext, raw: unknown): Promise<Job> {
  const b = parseBody(CompletionRequest, raw);
  checkModelName(ctx, b.model);
  const p = singlePrompt(b.prompt);
  // Tokenizing a long text takes a while: off the event loop.
  const ids = typeof p === 'string' ? await ctx.chat.encode(p) : p;
  checkVocabulary(ctx, ids, 'prompt');
  // OpenAI's default for completions is 16 tokens.
  const maxTokens = tokenLimit(ctx, ids, { value: b.max_tokens, param: 'max_tokens' }, 'prompt', 16);
  return {
    ids,
    opts: { ...sampling(b), maxTokens, stop: stopList(b.stop) },
    stream: b.stream ?? false,
    includeUsage: b.stream_options?.include_usage ?? false,
  };
}

async function chatJob(ctx: GenerationContext, raw: unknown): Promise<Job> {
  const b = parseBody(ChatRequest, raw);
  checkModelName(ctx, b.model);
  const prompt = await ctx.chat.prompt(b.messages.map((m) => ({ role: m.role, content: messageText(m.content), ...(m.name ? { name: m.name } : {}) })));
  const ids = prompt.ids;
  checkVocabulary(ctx, ids, 'messages');
  // Without a limit a chat answer may run to the end of the context (OpenAI's behaviour), as far as the budget allows.
  const sent =
    b.max_completion_tokens !== null && b.max_completion_tokens !== undefined
      ? { value: b.max_completion_tokens, param: 'max_completion_tokens' }
      : { value: b.max_tokens, param: 'max_tokens' };
  const maxTokens = tokenLimit(ctx, ids, sent, 'messages');
  return {
    ids,
    opts: { ...sampling(b), maxTokens, stop: [...stopList(b.stop), ...prompt.stop] },
    stream: b.stream ?? false,
    includeUsage: b.stream_options?.include_usage ?? false,
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
    const job = endpoint === 'chat' ? await chatJob(ctx, body) : await completionJob(ctx, body);
    let seq: Sequence;
    try {
      // The longest stored prefix of the prompt (a miss on any store failure), restored when admitted.
      let start: Start = {};
      if (ctx.prefix) {
        const prefix = ctx.prefix;
        const found = await prefix.lookup(job.ids);
        start = { image: found.image ?? undefined, afterChunk: prefix.afterChunk(found), onRestoreError: () => prefix.corruptDropped++ };
      }
      seq = await ctx.scheduler.submit(job.ids, { ...job.opts, signal: ac.signal }, start);
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
    return id.full(r.text, r.finishReason, usageOf(ctx, r));
  } catch (e) {
    outcome = e instanceof KiviError ? outcomeOf(e.status) : 'error';
    throw e;
  } finally {
    clearTimeout(timer);
    res.off('close', onClose);
    ctx.stats.requests.inc({ endpoint, outcome });
  }
}

/** OpenAI's usage; with a prefix cache, prompt_tokens_details.cached_tokens says how many were restored. */
function usageOf(ctx: GenerationContext, r: GenerateResult) {
  const u = usage(r.promptTokens, r.ids.length);
  return ctx.prefix ? { ...u, prompt_tokens_details: { cached_tokens: r.reusedTokens } } : u;
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
  ctx: GenerationContext,
  job: Job,
  seq: Sequence,
  id: ResponseId,
  signal: AbortSignal,
  timing: Timing,
  res: ServerResponse,
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
    if (job.includeUsage) send(id.usageChunk(usageOf(ctx, r)));
  }
  send('[DONE]');
  res.end();
  return outcome;
}
