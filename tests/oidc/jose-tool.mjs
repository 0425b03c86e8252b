// An independent JWT implementation (panva/jose) for the interop scenarios.
//
//   node jose-tool.mjs mint <issuer> <aud> <email>
//       Makes an RSA-2048 key and a self-signed certificate (openssl), and
//       prints {"certs": <Cloudflare-shaped certs document>, "token": <RS256
//       app token>, "expired": <the same, expired>}.
//   node jose-tool.mjs verify <certs-url> <token> <aud> <issuer>
//       Validates against the remote key set; prints the payload, or exits 1.
import { execFileSync } from 'node:child_process';
import { createHash, createPublicKey } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as jose from 'jose';

const [cmd, ...args] = process.argv.slice(2);

async function mint(issuer, aud, email) {
  const dir = mkdtempSync(join(tmpdir(), 'jose-tool-'));
  try {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
      '-subj', '/CN=e2e.cloudflareaccess.com',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
    ], { stdio: 'ignore' });
    const keyPem = readFileSync(join(dir, 'key.pem'), 'utf8');
    const certPem = readFileSync(join(dir, 'cert.pem'), 'utf8');
    const spki = createPublicKey(keyPem).export({ type: 'spki', format: 'der' });
    const kid = createHash('sha256').update(spki).digest('hex');
    const privateKey = await jose.importPKCS8(keyPem, 'RS256');
    const publicJwk = await jose.exportJWK(createPublicKey(keyPem));
    const jwk = { ...publicJwk, kid, alg: 'RS256', use: 'sig' };
    const cert = { kid, cert: certPem };
    const certs = { keys: [jwk], public_cert: cert, public_certs: [cert] };
    const now = Math.floor(Date.now() / 1000);
    const sign = (iat, exp) => new jose.SignJWT({
      email, type: 'app', identity_nonce: 'e2e-nonce', country: 'CH',
    })
      .setProtectedHeader({ alg: 'RS256', kid })
      .setIssuer(issuer).setAudience([aud]).setSubject('jose-user-1')
      .setIssuedAt(iat).setNotBefore(iat).setExpirationTime(exp)
      .sign(privateKey);
    const token = await sign(now - 5, now + 3600);
    const expired = await sign(now - 7200, now - 3600);
    process.stdout.write(JSON.stringify({ certs, token, expired }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function verify(certsUrl, token, aud, issuer) {
  const keys = jose.createRemoteJWKSet(new URL(certsUrl));
  const { payload, protectedHeader } = await jose.jwtVerify(token, keys, {
    audience: aud, issuer, algorithms: ['RS256'],
  });
  process.stdout.write(JSON.stringify({ payload, kid: protectedHeader.kid }));
}

try {
  if (cmd === 'mint') await mint(...args);
  else if (cmd === 'verify') await verify(...args);
  else throw new Error(`unknown command ${cmd}`);
} catch (e) {
  process.stderr.write(`jose-tool: ${e.code ?? ''} ${e.message}\n`);
  process.exit(1);
}
