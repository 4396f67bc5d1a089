/**
 * Tokenization with a checkpoint's `tokenizer.json` (@huggingface/tokenizers, which reproduces the
 * Rust library's ids) and the subject's token span.
 *
 * The library returns no character offsets, so the span is found by aligning tokens with the text,
 * in bytes: a byte-level BPE token is a run of UTF-8 bytes and may hold part of a multi-byte
 * character, so character positions cannot be summed per token. Each token's bytes are recovered
 * through GPT-2's byte↔unicode table; leading/trailing whitespace is trimmed from a token's range,
 * as the Rust library's `trim_offsets` does; a token belongs to the subject when its trimmed byte
 * range overlaps the subject's first occurrence.
 */
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { SubjectNotFoundError, TokenizerError } from "./errors.js";
import { parseJsonFile, readRegularFile } from "./files.js";
import { DEFAULT_PLAN_LIMITS } from "./limits.js";

/** GPT-2's reversible byte → printable-unicode map (bytes_to_unicode), inverted: code point → byte. */
function byteDecoder(): Map<number, number> {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const map = new Map<number, number>();
  const set = new Set(printable);
  for (const b of printable) map.set(b, b);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!set.has(b)) {
      map.set(256 + n, b);
      n++;
    }
  }
  return map;
}

const BYTE_DECODER = byteDecoder();
const utf8 = new TextEncoder();

function isSpaceByte(b: number): boolean {
  return b === 0x20 || (b >= 0x09 && b <= 0x0d);
}

/** A token span `[start, end)`. */
export type TokenSpan = [number, number];

/** A tokenizer for prompts, loaded from a `tokenizer.json`. */
export class PromptTokenizer {
  /** The file it was loaded from (for error messages). */
  readonly path: string;
  private readonly hf: HfTokenizer;
  private readonly added: Set<string>;
  private readonly byteLevel: boolean;
  private readonly nfc: boolean;

  /** Wrap a parsed tokenizer.json; prefer {@link loadTokenizer}. */
  constructor(json: Record<string, unknown>, path = "<memory>") {
    this.path = path;
    try {
      this.hf = new HfTokenizer(json, {});
    } catch (err) {
      throw new TokenizerError(`cannot build a tokenizer from ${path}: not a Hugging Face tokenizer.json that @huggingface/tokenizers supports`, {
        cause: err,
      });
    }
    const added = Array.isArray(json.added_tokens) ? (json.added_tokens as { content?: unknown }[]) : [];
    this.added = new Set(added.map((t) => t.content).filter((c): c is string => typeof c === "string"));
    const pre = json.pre_tokenizer as { type?: string; pretokenizers?: { type?: string }[] } | null | undefined;
    const dec = json.decoder as { type?: string } | null | undefined;
    this.byteLevel = pre?.type === "ByteLevel" || dec?.type === "ByteLevel" || !!pre?.pretokenizers?.some((p) => p.type === "ByteLevel");
    const norm = json.normalizer as { type?: string; normalizers?: { type?: string }[] } | null | undefined;
    this.nfc = norm?.type === "NFC" || !!norm?.normalizers?.some((n) => n.type === "NFC");
  }

  /** Token ids of `text` (no special tokens added), as the Rust library's `encode(text, add_special_tokens=False)`. */
  encode(text: string): number[] {
    return this.hf.encode(text, { add_special_tokens: false }).ids;
  }

  /** Decode ids to text. */
  decode(ids: number[]): string {
    return this.hf.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  }

  /** Ids of `text` and the `[start, end)` token span of `subject`'s first occurrence in it. */
  encodeWithSubject(text: string, subject: string): { ids: number[]; subjectSpan: TokenSpan } {
    if (subject.length === 0) throw new SubjectNotFoundError(text, subject, "the subject is empty");
    const norm = this.nfc ? text.normalize("NFC") : text;
    const normSubject = this.nfc ? subject.normalize("NFC") : subject;
    const at = norm.indexOf(normSubject);
    if (at < 0) throw new SubjectNotFoundError(text, subject);
    const enc = this.hf.encode(text, { add_special_tokens: false });
    const ranges = this.byteRanges(enc.tokens, norm);
    const sStart = utf8.encode(norm.slice(0, at)).length;
    const sEnd = sStart + utf8.encode(normSubject).length;
    let first = -1;
    let last = -1;
    for (let i = 0; i < ranges.length; i++) {
      const [b, e] = ranges[i]!;
      if (b < e && b < sEnd && e > sStart) {
        if (first < 0) first = i;
        last = i;
      }
    }
    if (first < 0) throw new SubjectNotFoundError(text, subject, "no token overlaps it");
    return { ids: enc.ids, subjectSpan: [first, last + 1] };
  }

  /** The `[start, end)` token span of `subject`'s first occurrence in `text`. */
  subjectSpan(text: string, subject: string): TokenSpan {
    return this.encodeWithSubject(text, subject).subjectSpan;
  }

  /** Byte range of each token in the (normalized) text, with surrounding whitespace trimmed. */
  private byteRanges(tokens: string[], normText: string): [number, number][] {
    const out: [number, number][] = [];
    let pos = 0;
    const all: number[] = [];
    for (const tok of tokens) {
      const bytes = this.tokenBytes(tok);
      let b = 0;
      let e = bytes.length;
      while (b < e && isSpaceByte(bytes[b]!)) b++;
      while (e > b && isSpaceByte(bytes[e - 1]!)) e--;
      out.push([pos + b, pos + e]);
      pos += bytes.length;
      for (const x of bytes) all.push(x);
    }
    const expected = utf8.encode(normText);
    if (expected.length !== all.length || expected.some((x, i) => x !== all[i])) {
      throw new TokenizerError(
        `cannot align the tokens of ${JSON.stringify(normText)} with its text (${this.path} is not a byte-level BPE tokenizer, or it changes the text beyond NFC); give the prompt pre-tokenized with input_ids and a subject span instead`,
      );
    }
    return out;
  }

  private tokenBytes(tok: string): number[] {
    if (this.added.has(tok) || !this.byteLevel) return [...utf8.encode(tok)];
    const out: number[] = [];
    for (const ch of tok) {
      const b = BYTE_DECODER.get(ch.codePointAt(0)!);
      if (b === undefined) out.push(...utf8.encode(ch));
      else out.push(b);
    }
    return out;
  }
}

/**
 * Load a `tokenizer.json`.
 * @throws TokenizerError naming the file when it is missing or not a tokenizer.
 */
export function loadTokenizer(path: string, maxBytes = DEFAULT_PLAN_LIMITS.maxFileBytes): PromptTokenizer {
  const text = readRegularFile(
    path,
    "tokenizer file",
    maxBytes,
    (msg, cause) => new TokenizerError(`${msg}; set model.tokenizer to a tokenizer.json, or give prompts pre-tokenized (input_ids + subject span)`, { cause }),
  );
  const json = parseJsonFile(text, "tokenizer file", path, (msg, cause) => new TokenizerError(msg, { cause }));
  if (json === null || typeof json !== "object" || !("model" in json)) {
    throw new TokenizerError(`tokenizer file ${path} has no \`model\` field; expected a Hugging Face tokenizer.json`);
  }
  return new PromptTokenizer(json as Record<string, unknown>, path);
}
