/**
 * Shared error classes for the repadapter package.
 *
 * Every error thrown on purpose by the package is a `RepAdapterError`, so a
 * caller can separate "the package refused this input" from bugs or system
 * errors with one `instanceof` check. `error.name` is the concrete class name
 * (also for subclasses defined elsewhere), so stack traces and logs say which
 * kind of problem occurred.
 *
 * Argument problems use a single message template, produced by {@link expected}:
 *
 *     expected <what> for <name>, got <value>
 */

/** Base class of all errors thrown on purpose by repadapter. */
export class RepAdapterError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    // new.target is the concrete (sub)class, so subclasses need not set it.
    this.name = new.target.name;
  }
}

/** A file or byte buffer is malformed (bad header, inconsistent sizes, ...). */
export class FormatError extends RepAdapterError {
  /** The file the problem was found in, when it came from a file. */
  readonly file?: string;
  /** The tensor (or other named item) the problem concerns, when there is one. */
  readonly tensor?: string;

  constructor(message: string, options?: ErrorOptions & { file?: string; tensor?: string }) {
    super(message, options);
    if (options?.file !== undefined) this.file = options.file;
    if (options?.tensor !== undefined) this.tensor = options.tensor;
  }
}

/** Shapes or element counts do not agree. */
export class ShapeError extends RepAdapterError {}

/** An invalid configuration or option value. */
export class ConfigError extends RepAdapterError {}

/** An object was used after it was disposed (its native resources are gone). */
export class DisposedError extends RepAdapterError {}

/** A function was called with an argument of the wrong kind or value. */
export class ArgumentError extends RepAdapterError {}

/** A value (a class label, an index) lies outside its valid range. */
export class OutOfRangeError extends RepAdapterError {}

/** A model was used while an async call on it is still running. */
export class BusyError extends RepAdapterError {}

/**
 * The native core failed for a reason that is not the caller's input: out of memory, a missing
 * library or device, or an internal library error. `code` says which (RA_OUT_OF_MEMORY,
 * RA_UNAVAILABLE, RA_INTERNAL).
 */
export class NativeError extends RepAdapterError {
  readonly code: string;
  constructor(message: string, code: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}

/** One tensor whose shape differs between a state dict and its target. */
export interface MisshapedTensor {
  name: string;
  expected: number[];
  got: number[];
}

/**
 * A state dict does not match the model it is loaded into. The message lists
 * every problem at once (all missing, all unexpected, all misshaped tensors),
 * so one failed load is enough to see everything that needs fixing.
 */
export class StateDictError extends RepAdapterError {
  readonly missing: string[];
  readonly unexpected: string[];
  readonly misshaped: MisshapedTensor[];

  constructor(
    problems: { missing?: string[]; unexpected?: string[]; misshaped?: MisshapedTensor[] },
    options?: ErrorOptions & { context?: string },
  ) {
    const missing = [...(problems.missing ?? [])];
    const unexpected = [...(problems.unexpected ?? [])];
    const misshaped = (problems.misshaped ?? []).map((m) => ({
      name: m.name,
      expected: [...m.expected],
      got: [...m.got],
    }));
    super(StateDictError.describe(missing, unexpected, misshaped, options?.context), options);
    this.missing = missing;
    this.unexpected = unexpected;
    this.misshaped = misshaped;
  }

  private static describe(
    missing: string[],
    unexpected: string[],
    misshaped: MisshapedTensor[],
    context?: string,
  ): string {
    const counts: string[] = [];
    if (missing.length) counts.push(`${missing.length} missing`);
    if (unexpected.length) counts.push(`${unexpected.length} unexpected`);
    if (misshaped.length) counts.push(`${misshaped.length} misshaped`);
    const head = `state dict does not match${context ? ` ${context}` : ''}: ${
      counts.length ? counts.join(', ') : 'no problems listed'
    }`;
    const lines = [head];
    if (missing.length) lines.push(`  missing: ${missing.map(quote).join(', ')}`);
    if (unexpected.length) lines.push(`  unexpected: ${unexpected.map(quote).join(', ')}`);
    for (const m of misshaped) {
      lines.push(`  misshaped: ${quote(m.name)} expected [${m.expected.join(', ')}], got [${m.got.join(', ')}]`);
    }
    return lines.join('\n');
  }
}

function quote(s: string): string {
  return JSON.stringify(s);
}

const MAX_STRING = 40;
const MAX_ITEMS = 6;
const MAX_KEYS = 4;
const MAX_TOTAL = 120;

/**
 * Formats the standard argument-problem message:
 * `expected <what> for <name>, got <value>`, with `got` rendered compactly
 * (strings quoted and truncated, typed arrays as `Float32Array(12)`, long
 * arrays and objects abbreviated).
 */
export function expected(what: string, name: string, got: unknown): string {
  return `expected ${what} for ${name}, got ${formatValue(got)}`;
}

/** Compact, single-line rendering of any value for error messages. */
export function formatValue(value: unknown): string {
  const s = render(value, 0);
  return s.length > MAX_TOTAL ? `${s.slice(0, MAX_TOTAL - 1)}…` : s;
}

function render(v: unknown, depth: number): string {
  switch (typeof v) {
    case 'undefined':
      return 'undefined';
    case 'string':
      return v.length > MAX_STRING ? `${JSON.stringify(v.slice(0, MAX_STRING))}… (${v.length} chars)` : JSON.stringify(v);
    case 'number':
      return Object.is(v, -0) ? '-0' : String(v);
    case 'bigint':
      return `${v}n`;
    case 'boolean':
      return String(v);
    case 'symbol':
      return v.toString();
    case 'function':
      return `function ${v.name || '(anonymous)'}`;
  }
  if (v === null) return 'null';
  const o = v as object;
  if (Array.isArray(o)) {
    if (depth > 0) return `Array(${o.length})`;
    const items = o.slice(0, MAX_ITEMS).map((x) => render(x, depth + 1));
    if (o.length > MAX_ITEMS) items.push(`… (${o.length} items)`);
    return `[${items.join(', ')}]`;
  }
  if (ArrayBuffer.isView(o)) {
    if (o instanceof DataView) return `DataView(${o.byteLength} bytes)`;
    return `${o.constructor.name}(${(o as unknown as { length: number }).length})`;
  }
  if (o instanceof ArrayBuffer) return `ArrayBuffer(${o.byteLength} bytes)`;
  if (o instanceof Map) return `Map(${o.size})`;
  if (o instanceof Set) return `Set(${o.size})`;
  if (o instanceof Date) return Number.isNaN(o.getTime()) ? 'Invalid Date' : o.toISOString();
  if (o instanceof Error) return `${o.name}: ${o.message}`;
  const proto = Object.getPrototypeOf(o) as object | null;
  const ctor = proto && proto !== Object.prototype ? (proto.constructor as { name?: string } | undefined)?.name : '';
  const prefix = ctor ? `${ctor} ` : '';
  if (depth > 0) return `${prefix}{…}`;
  const keys = Object.keys(o);
  const parts = keys
    .slice(0, MAX_KEYS)
    .map((k) => `${/^[A-Za-z_$][\w$]*$/.test(k) ? k : JSON.stringify(k)}: ${renderProperty(o, k, depth + 1)}`);
  if (keys.length > MAX_KEYS) parts.push(`… (${keys.length} keys)`);
  return `${prefix}{${parts.join(', ')}}`;
}

function renderProperty(o: object, key: string, depth: number): string {
  try {
    return render((o as Record<string, unknown>)[key], depth);
  } catch {
    return '<unreadable>';
  }
}
