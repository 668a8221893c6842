/**
 * The bytes behind a QMP string as QEMU sees them, for ringbuf-write and
 * ringbuf-read in utf8 format: QEMU's JSON parser stores a string as
 * "modified UTF-8" (U+0000 as the two bytes C0 80, so a C string can hold
 * it), and its JSON writer reads a C string back code point by code point
 * (util/unicode.c's mod_utf8_codepoint), replacing each invalid sequence
 * with U+FFFD. A NUL byte ends the string.
 */

/** A QMP string's bytes in QEMU (ringbuf-write's data in utf8 format). */
export function toModifiedUtf8(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (!b.includes(0)) return b;
  const parts: number[] = [];
  for (const x of b) {
    if (x === 0) parts.push(0xc0, 0x80);
    else parts.push(x);
  }
  return Buffer.from(parts);
}

const MIN_CP = [0x80, 0x800, 0x10000, 0x200000, 0x4000000];

function validCodePoint(cp: number): boolean {
  if (cp > 0x10ffff) return false;
  if ((cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) === 0xfffe) return false;
  return !(cp >= 0xd800 && cp <= 0xdfff);
}

/** The string QEMU's JSON writer makes of these bytes (ringbuf-read's reply in utf8 format). */
export function fromQemuCString(bytes: Uint8Array): string {
  let out = '';
  let i = 0;
  const n = bytes.length;
  while (i < n && bytes[i] !== 0) {
    const first = bytes[i++]!;
    let cp: number;
    if (first < 0x80) {
      cp = first;
    } else if (first >= 0xfe || (first & 0x40) === 0) {
      cp = -1; // impossible byte, or a continuation byte with no lead
    } else {
      let len = 0;
      let mask = 0x80;
      for (; first & mask; mask >>= 1) len++;
      cp = first & (mask - 1);
      for (let k = 1; k < len; k++) {
        const b = i < n ? bytes[i]! : 0;
        if ((b & 0xc0) !== 0x80) { cp = -1; break; }
        i++;
        cp = cp * 64 + (b & 0x3f);
      }
      if (cp >= 0) {
        if (!validCodePoint(cp)) cp = -1;
        else if (cp < MIN_CP[len - 2]! && !(cp === 0 && len === 2)) cp = -1; // overlong, except C0 80
      }
    }
    out += String.fromCodePoint(cp < 0 ? 0xfffd : cp);
  }
  return out;
}
