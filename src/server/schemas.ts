/**
 * Request bodies of the OpenAI completions and chat completions APIs, checked with zod. Unknown fields
 * are refused rather than silently ignored; OpenAI fields this server does not implement are accepted
 * only at their neutral values (n = 1, penalties 0, no logprobs), so a client that sends defaults works.
 */
import { z } from 'zod';
import { KiviError } from '../util/errors.js';

/** A request error in the OpenAI shape, with the parameter it concerns. */
export class RequestError extends KiviError {
  constructor(
    message: string,
    status: number,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message, status);
  }
}

const tokenId = z.number().int().min(0);
const stop = z.union([z.string(), z.array(z.string()).max(4)], { error: 'must be a string or an array of at most 4 strings' });
const off = (what: string) => z.union([z.literal(false), z.literal(0), z.null()], { error: `${what} is not supported` }).optional();

const SEED_RANGE = 'must be an integer in [0, 4294967295]';

const sampling = {
  model: z.string(),
  max_tokens: z.number().int().min(1).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  /** Extension (llama.cpp, vLLM): sample from the k most likely tokens; 0 = all. */
  top_k: z.number().int().min(0).nullish(),
  /** 32-bit, as on the command line: larger seeds are refused, not silently reduced. */
  seed: z
    .number()
    .int({ error: SEED_RANGE })
    .min(0, { error: SEED_RANGE })
    .max(2 ** 32 - 1, { error: SEED_RANGE })
    .nullish(),
  stop: stop.nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.strictObject({ include_usage: z.boolean().optional() }).nullish(),
  n: z.literal(1, { error: 'only n = 1 is supported' }).nullish(),
  presence_penalty: z.literal(0, { error: 'presence_penalty is not supported (only 0)' }).nullish(),
  frequency_penalty: z.literal(0, { error: 'frequency_penalty is not supported (only 0)' }).nullish(),
  logprobs: off('logprobs'),
  user: z.string().optional(),
};

export const CompletionRequest = z.strictObject({
  ...sampling,
  prompt: z.union([z.string(), z.array(z.string()), z.array(tokenId), z.array(z.array(tokenId))], {
    error: 'must be a string, an array of token ids, or a one-element array of either',
  }),
  echo: off('echo'),
  best_of: z.literal(1, { error: 'only best_of = 1 is supported' }).nullish(),
});
export type CompletionRequest = z.infer<typeof CompletionRequest>;

const textPart = z.object({ type: z.literal('text'), text: z.string() });
const message = z.object({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  content: z.union([z.string(), z.array(textPart)], { error: 'must be a string or an array of text parts' }),
  name: z.string().optional(),
});

export const ChatRequest = z.strictObject({
  ...sampling,
  messages: z.array(message).min(1),
  max_completion_tokens: z.number().int().min(1).nullish(),
});
export type ChatRequest = z.infer<typeof ChatRequest>;

/** Parse a body against a schema; the first problem becomes a 400 naming its parameter. */
export function parseBody<T>(schema: z.ZodType<T>, body: unknown): T {
  if (body === undefined || body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new RequestError('the request body must be a JSON object', 400);
  }
  const r = schema.safeParse(body);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  if (issue.code === 'unrecognized_keys') {
    const keys = issue.keys;
    throw new RequestError(`unsupported or unknown parameter${keys.length > 1 ? 's' : ''}: ${keys.join(', ')}`, 400, keys[0] ?? null);
  }
  const param = issue.path.length > 0 ? issue.path.map(String).join('.') : null;
  // JSON numbers beyond float64 (1e400) parse as ±Infinity, which zod reports as "expected number, received number".
  const message =
    issue.code === 'invalid_type' && (issue as { received?: unknown }).received === 'Infinity'
      ? 'the number is out of range (it must be finite)'
      : issue.message;
  throw new RequestError(param ? `${param}: ${message}` : message, 400, param);
}

/** The one prompt of a completions request: text, or token ids used as given. */
export function singlePrompt(p: CompletionRequest['prompt']): string | number[] {
  if (typeof p === 'string') return p;
  if (p.length === 0) throw new RequestError('prompt must not be empty', 400, 'prompt');
  if (typeof p[0] === 'number') return p as number[];
  if (p.length > 1) throw new RequestError(`only one prompt per request is supported, got ${p.length}`, 400, 'prompt');
  const only = p[0]!;
  if (typeof only === 'string') return only;
  if (only.length === 0) throw new RequestError('prompt must not be empty', 400, 'prompt');
  return only;
}

/** Text of a chat message's content (text parts joined). */
export function messageText(content: string | { text: string }[]): string {
  return typeof content === 'string' ? content : content.map((p) => p.text).join('');
}
