// A real OAuth 2.0 / OpenID Connect server for Latchkey's connection tests
// and benchmark: the `oidc-provider` package (which nobody on the project
// wrote) on 127.0.0.1, with one confidential client and settings that make
// the interesting cases happen quickly — short access-token lifetimes,
// rotating refresh tokens, PKCE S256 required.
//
// Configuration (environment):
//   OIDC_PORT            port on 127.0.0.1 (default 0: any free port)
//   OIDC_CLIENT_ID       client id (default "latchkey")
//   OIDC_CLIENT_SECRET   client secret (required)
//   OIDC_REDIRECT_URIS   the client's redirect URIs, separated by commas or spaces (required)
//   OIDC_ACCESS_TTL      access-token lifetime in seconds (default 8)
//   OIDC_REFRESH_TTL     refresh-token lifetime in seconds (default 86400)
//   OIDC_APPLICATION_TYPE  the client's application_type: "web" (default;
//                        redirect URIs match exactly) or "native" (RFC 8252
//                        §7.3: a loopback http redirect URI matches on any
//                        port, as the desktop app's ephemeral one needs)
//
// Once listening it prints ONE line on stdout:
//   OIDC READY {"issuer":"http://127.0.0.1:PORT","port":PORT}
// and exits when its standard input closes (the test that started it is
// gone), so a killed test run leaves no server behind.
//
// Logging in: the package's own development interactions. GET the
// interaction page, POST `prompt=login&login=NAME&password=ANY` to the same
// URL, then POST `prompt=consent`; GET `<interaction>/abort` denies access
// (the client then receives `error=access_denied`).
//
// Test-only endpoints (answered to loopback peers only; the server binds
// 127.0.0.1 anyway):
//   GET /_test/stats  → {"refresh_requests", "refresh_success", "refresh_errors",
//                        "code_requests", "code_success", "code_errors",
//                        "revocations", "introspections", "userinfo"}
//   GET /_test/tokens → {"refresh_tokens": [...], "access_tokens": [...]} every
//                       token value issued so far, so tests can prove that
//                       none of them leaks where it must not appear

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

function env(name, fallback) {
  const v = process.env[name];
  if (v === undefined || v === '') {
    if (fallback === undefined) {
      console.error(`oidc test server: ${name} is required`);
      process.exit(2);
    }
    return fallback;
  }
  return v;
}

function seconds(name, fallback) {
  const v = Number(env(name, String(fallback)));
  if (!Number.isInteger(v) || v <= 0) {
    console.error(`oidc test server: ${name} must be a positive number of seconds`);
    process.exit(2);
  }
  return v;
}

const port = Number(env('OIDC_PORT', '0'));
const clientId = env('OIDC_CLIENT_ID', 'latchkey');
const clientSecret = env('OIDC_CLIENT_SECRET');
const redirectUris = env('OIDC_REDIRECT_URIS').split(/[\s,]+/).filter(Boolean);
const accessTtl = seconds('OIDC_ACCESS_TTL', 8);
const refreshTtl = seconds('OIDC_REFRESH_TTL', 86400);
const applicationType = env('OIDC_APPLICATION_TYPE', 'web');
if (!['web', 'native'].includes(applicationType)) {
  console.error('oidc test server: OIDC_APPLICATION_TYPE must be web or native');
  process.exit(2);
}

const stats = {
  refresh_requests: 0,
  refresh_success: 0,
  refresh_errors: 0,
  code_requests: 0,
  code_success: 0,
  code_errors: 0,
  revocations: 0,
  introspections: 0,
  userinfo: 0,
};

// Every token value issued (opaque tokens: the value is the token's id).
const issued = { refresh_tokens: [], access_tokens: [] };

function isLoopback(addr) {
  return addr === '127.0.0.1' || addr === '::1' || addr === '::ffff:127.0.0.1';
}

// Listen first (port 0 → a free port), then build the provider with the
// issuer URL that names the real port.
let handler = (_req, res) => {
  res.statusCode = 503;
  res.end();
};
const server = createServer((req, res) => handler(req, res));
server.keepAliveTimeout = 30_000;
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const actualPort = server.address().port;
const issuer = `http://127.0.0.1:${actualPort}`;

// Signing key for ID tokens: made fresh each run (nothing persists).
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid: 'test-1' };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      application_type: applicationType,
      redirect_uris: redirectUris,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  pkce: { required: () => true },
  rotateRefreshToken: true,
  // OpenID Connect drops `offline_access` from a request without
  // `prompt=consent` (Core §11), and the package then issues no refresh
  // token by default. Issue one whenever the client may use it, so the flow
  // works with or without `prompt=consent`; the granted `scope` still tells
  // whether `offline_access` was granted.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Tokens outlive the login session at the provider.
  expiresWithSession: async () => false,
  // Revoking any token of a grant (also an access token, RFC 7009) revokes
  // the whole grant: the tests' "the user revoked access at the provider".
  revokeGrantPolicy: () => true,
  ttl: {
    AccessToken: accessTtl,
    AuthorizationCode: 60,
    IdToken: 3600,
    Interaction: 600,
    Session: 86400,
    Grant: refreshTtl,
    RefreshToken: refreshTtl,
  },
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    userinfo: { enabled: true },
  },
  findAccount: async (_ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub }),
  }),
});

// Count what the tests assert on: every token request by grant type, after
// the provider has parsed (and answered) it.
provider.use(async (ctx, next) => {
  await next();
  const route = ctx.oidc?.route;
  if (route === 'token') {
    const grant = ctx.oidc.params?.grant_type;
    const ok = ctx.status === 200;
    if (grant === 'refresh_token') {
      stats.refresh_requests += 1;
      stats[ok ? 'refresh_success' : 'refresh_errors'] += 1;
    } else if (grant === 'authorization_code') {
      stats.code_requests += 1;
      stats[ok ? 'code_success' : 'code_errors'] += 1;
    }
  } else if (route === 'revocation') {
    stats.revocations += 1;
  } else if (route === 'introspection') {
    stats.introspections += 1;
  } else if (route === 'userinfo') {
    stats.userinfo += 1;
  }
});

provider.on('refresh_token.saved', (token) => issued.refresh_tokens.push(token.jti));
provider.on('access_token.saved', (token) => issued.access_tokens.push(token.jti));

const testRoutes = {
  '/_test/stats': () => stats,
  '/_test/tokens': () => issued,
};

const callback = provider.callback();
handler = (req, res) => {
  const route = testRoutes[req.url];
  if (route && req.method === 'GET') {
    if (!isLoopback(req.socket.remoteAddress)) {
      res.statusCode = 403;
      res.end();
      return;
    }
    res.setHeader('content-type', 'application/json');
    res.setHeader('cache-control', 'no-store');
    res.end(JSON.stringify(route()));
    return;
  }
  callback(req, res);
};

// The starter's end of stdin closes when it exits or is killed.
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}

process.stdout.write(`OIDC READY ${JSON.stringify({ issuer, port: actualPort })}\n`);
