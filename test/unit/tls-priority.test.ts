import { describe, expect, it } from 'vitest';
import { PriorityError, translatePriority } from '../../src/objects/tls/priority.ts';

describe('GnuTLS priority strings to node:tls settings', () => {
  it('NORMAL allows TLS 1.2 and 1.3 with certificate key exchanges only', () => {
    const s = translatePriority('NORMAL');
    expect([s.minVersion, s.maxVersion]).toEqual(['TLSv1.2', 'TLSv1.3']);
    expect(s.ciphers.split(':')).toContain('ECDHE-RSA-AES256-GCM-SHA384');
    expect(s.ciphers).not.toMatch(/PSK|ADH/);
    expect(s.ciphersuites.split(':')).toEqual(['TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256', 'TLS_AES_128_GCM_SHA256', 'TLS_AES_128_CCM_SHA256']);
    expect(s.honorCipherOrder).toBe(false);
  });

  it('version removals and "only 1.3"', () => {
    expect(translatePriority('NORMAL:-VERS-TLS1.3')).toMatchObject({ minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2', ciphersuites: '' });
    expect(translatePriority('@SYSTEM:-VERS-ALL:+VERS-TLS1.3')).toMatchObject({ minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', ciphers: '' });
    expect(translatePriority('NORMAL:-VERS-TLS-ALL:+VERS-TLS1.2')).toMatchObject({ minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' });
  });

  it('TLS below 1.2 is never offered', () => {
    expect(translatePriority('NORMAL:+VERS-TLS1.0:+VERS-TLS1.1').minVersion).toBe('TLSv1.2');
    expect(() => translatePriority('NORMAL:-VERS-ALL:+VERS-TLS1.1')).toThrow('no protocol version of TLS 1.2 or later is enabled');
  });

  it('cipher and MAC removals reach both lists', () => {
    const s = translatePriority('NORMAL:-AES-128-GCM:-AES-128-CBC:-AES-128-CCM:-SHA1:%SERVER_PRECEDENCE');
    expect(s.ciphers).not.toMatch(/AES128/);
    expect(s.ciphers).not.toMatch(/-SHA(:|$)/);
    expect(s.ciphersuites).toBe('TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256');
    expect(s.honorCipherOrder).toBe(true);
    expect(translatePriority('NONE:+VERS-TLS1.2:+AES-256-GCM:+AEAD:+ECDHE-RSA').ciphers).toBe('ECDHE-RSA-AES256-GCM-SHA384');
  });

  it('QEMU\'s PSK and anonymous additions', () => {
    expect(translatePriority('NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK').ciphers).toMatch(/PSK-AES256-GCM-SHA384/);
    expect(translatePriority('NORMAL:+ANON-DH').ciphers).toMatch(/ADH-AES256-GCM-SHA384.*@SECLEVEL=0$/);
  });

  it('anything else is refused, naming what', () => {
    expect(() => translatePriority('NORMAL:+VERS-TLS9.9')).toThrow("unknown protocol version '+VERS-TLS9.9'");
    expect(() => translatePriority('BOGUS')).toThrow("unknown priority keyword 'BOGUS'");
    expect(() => translatePriority('NORMAL:+GROUP-X448')).toThrow("unknown priority element '+GROUP-X448'");
    expect(() => translatePriority('NORMAL:%NOSUCH')).toThrow(PriorityError);
    expect(() => translatePriority('NORMAL:VERS-TLS1.2')).toThrow('has no +, - or !');
    expect(() => translatePriority('NONE:+VERS-TLS1.3')).toThrow('no cipher suite is enabled');
  });
});
