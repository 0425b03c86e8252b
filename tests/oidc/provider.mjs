// A real OpenID provider (panva/oidc-provider) for the end-to-end tests.
//
//   node provider.mjs   with the environment:
//     OIDC_PORT            port on 127.0.0.1
//     OIDC_ISSUER          issuer URL (http://127.0.0.1:<port>)
//     OIDC_CLIENT_ID       the one static client
//     OIDC_CLIENT_SECRET
//     OIDC_REDIRECT_URIS   comma-separated
//     OIDC_ACCOUNT_EMAIL   the test account's email (also its login)
//     OIDC_ACCOUNT_PASSWORD
//
// The login form is served by this script (the provider's own page, not the
// gateway's); consent is granted automatically. Prints "listening" when
// ready.
import http from 'node:http';
import Provider from 'oidc-provider';

const env = (name) => {
  const v = process.env[name];
  if (!v) { console.error(`missing ${name}`); process.exit(2); }
  return v;
};
const port = Number(env('OIDC_PORT'));
const issuer = env('OIDC_ISSUER');
const email = env('OIDC_ACCOUNT_EMAIL');
const password = env('OIDC_ACCOUNT_PASSWORD');
const accountId = 'user-ada-0001';

const provider = new Provider(issuer, {
  clients: [{
    client_id: env('OIDC_CLIENT_ID'),
    client_secret: env('OIDC_CLIENT_SECRET'),
    redirect_uris: env('OIDC_REDIRECT_URIS').split(','),
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  async findAccount(ctx, id) {
    if (id !== accountId) return undefined;
    return {
      accountId,
      async claims() {
        return { sub: accountId, email, email_verified: true, name: 'Ada Lovelace', groups: ['engineers'] };
      },
    };
  },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
  scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  features: { devInteractions: { enabled: false } },
  pkce: { required: () => false },
  conformIdTokenClaims: false,
  cookies: { keys: ['e2e-cookie-key-not-a-secret-0001'] },
  ttl: { AccessToken: 600, AuthorizationCode: 60, IdToken: 600, Interaction: 600, Session: 3600, Grant: 3600 },
});
provider.proxy = false;

const page = (uid, error) => `<!doctype html>
<html><head><title>E2E Identity Provider - Sign in</title></head>
<body style="font-family:sans-serif;max-width:24em;margin:4em auto">
<h1>E2E Identity Provider</h1>
${error ? `<p id="error" style="color:#b00">${error}</p>` : ''}
<form method="post" action="/interaction/${uid}/login" autocomplete="off">
<label>Email <input id="email" name="email" type="email"></label><br><br>
<label>Password <input id="password" name="password" type="password"></label><br><br>
<button id="submit" type="submit">Sign in</button>
</form></body></html>`;

function readForm(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.on('data', (c) => { body += c; if (body.length > 1e5) req.destroy(); });
    req.on('end', () => resolve(new URLSearchParams(body)));
    req.on('error', reject);
  });
}

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { uid, prompt, params, session } = details;
  if (req.method === 'POST' && req.url.endsWith('/login')) {
    const form = await readForm(req);
    if (form.get('email') !== email || form.get('password') !== password) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(page(uid, 'Wrong email or password.'));
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
    return;
  }
  if (prompt.name === 'login') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(page(uid));
    return;
  }
  // consent: granted for what was asked
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: details.grantId ? {} : { grantId } }, { mergeWithLastSubmission: true });
}

const callback = provider.callback();
http.createServer((req, res) => {
  if (req.url.startsWith('/interaction/')) {
    interaction(req, res).catch((e) => {
      console.error('interaction failed:', e.message);
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end(`interaction failed: ${e.message}`);
    });
  } else {
    callback(req, res);
  }
}).listen(port, '127.0.0.1', () => console.log(`listening on ${issuer}`));
