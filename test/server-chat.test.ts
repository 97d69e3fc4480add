/** Chat prompts: a model's Jinja chat template, rendered for real; the plain-text fallback otherwise. */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { KiviModel } from '../src/api.js';
import { KiviServer } from '../src/server/app.js';
import { ChatFormatter, FALLBACK_STOP, findChatTemplate } from '../src/server/chat.js';
import { KiviError } from '../src/util/errors.js';
import { bundledModel, MODEL_DIR, tmpDir } from './helpers.js';
import { client } from './server-helpers.js';

// ChatML, with the tokenizer's BOS written by the template (as Hugging Face templates do).
const CHATML =
  "{{ bos_token }}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// Instruction format that insists on alternating user/assistant turns.
const INST =
  "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
  "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}" +
  "{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' }}" +
  "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}";

describe('chat prompts', () => {
  test('the plain-text fallback: one "Role: text" line per message, then "Assistant:", with BOS', async () => {
    const m = await bundledModel();
    const f = new ChatFormatter(m.tokenizer, undefined);
    assert.equal(f.kind, 'plain-text');
    const p = await f.prompt([
      { role: 'developer', content: 'Be brief.' },
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Hello.' },
      { role: 'user', content: 'A color?' },
    ]);
    assert.deepEqual(p.ids, m.encode('System: Be brief.\nUser: Hi\nAssistant: Hello.\nUser: A color?\nAssistant:'));
    assert.equal(p.ids[0], m.tokenizer.bosId);
    assert.deepEqual(p.stop, [FALLBACK_STOP]);
    await f.close();
  });

  test('a Jinja template is rendered with the generation prompt and encoded without a second BOS', async () => {
    const m = await bundledModel();
    const f = new ChatFormatter(m.tokenizer, CHATML);
    assert.equal(f.kind, 'template');
    const p = await f.prompt([
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hi' },
    ]);
    const text = '<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n';
    assert.deepEqual(p.ids, m.encode(text, { bos: false }));
    assert.equal(p.ids[0], 1);
    assert.notEqual(p.ids[1], 1);
    assert.deepEqual(p.stop, []);

    const inst = new ChatFormatter(m.tokenizer, INST);
    const q = await inst.prompt([
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Yo' },
      { role: 'user', content: 'Bye' },
    ]);
    assert.deepEqual(q.ids, m.encode('<s>[INST] Hi [/INST] Yo</s><s>[INST] Bye [/INST]', { bos: false }));
    assert.deepEqual(q.ids.filter((t) => t === 1).length, 2);
    await f.close();
    await inst.close();
  });

  test('a template that rejects the messages is a 400; one that does not parse fails at start-up', async () => {
    const m = await bundledModel();
    const inst = new ChatFormatter(m.tokenizer, INST);
    await assert.rejects(
      inst.prompt([{ role: 'assistant', content: 'first' }]),
      (e: unknown) => e instanceof KiviError && e.status === 400 && /roles must alternate/.test(e.message),
    );
    await inst.close();
    assert.throws(
      () => new ChatFormatter(m.tokenizer, '{% for x in %}'),
      (e: unknown) => e instanceof KiviError && /does not parse/.test(e.message),
    );
  });

  test('where a template is found: a string, the "default" of a named list, or chat_template.jinja', () => {
    const dir = tmpDir('kivi-chat-');
    assert.equal(findChatTemplate(dir, { chat_template: 'A' }), 'A');
    assert.equal(
      findChatTemplate(dir, {
        chat_template: [
          { name: 'tool_use', template: 'T' },
          { name: 'default', template: 'D' },
        ],
      }),
      'D',
    );
    assert.equal(findChatTemplate(dir, {}), undefined);
    fs.writeFileSync(path.join(dir, 'chat_template.jinja'), 'J');
    assert.equal(findChatTemplate(dir, {}), 'J');
  });
});

describe('kivi serve with a model that ships a chat template', () => {
  let server: KiviServer;
  let m: KiviModel;

  before(async () => {
    // The bundled model with a chat template added: weights linked, tokenizer config rewritten.
    const dir = tmpDir('kivi-chatml-');
    for (const f of fs.readdirSync(MODEL_DIR)) {
      if (f !== 'tokenizer_config.json') fs.symlinkSync(path.resolve(MODEL_DIR, f), path.join(dir, f));
    }
    const cfg = JSON.parse(fs.readFileSync(path.join(MODEL_DIR, 'tokenizer_config.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ ...cfg, chat_template: CHATML }));
    m = await KiviModel.load(dir);
    server = await KiviServer.start(m, { port: 0, kv: 'kivi2', modelName: 'chatml-test' });
  });
  after(() => server.close());

  test('chat completions use the template: prompt tokens and greedy answer match the rendered prompt', async () => {
    const messages = [{ role: 'user' as const, content: 'Where is the river?' }];
    const ids = m.encode('<s><|im_start|>user\nWhere is the river?<|im_end|>\n<|im_start|>assistant\n', { bos: false });
    const ref = await m.complete(ids, { maxTokens: 10, kv: 'kivi2' });
    const r = await client(server).chat.completions.create({ model: 'chatml-test', messages, max_tokens: 10, temperature: 0 });
    assert.equal(r.usage!.prompt_tokens, ids.length);
    assert.equal(r.choices[0]!.message.content, ref.text);
    assert.equal(r.model, 'chatml-test');
  });
});
