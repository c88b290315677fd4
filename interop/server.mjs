// A real authorization server for tokend's interoperability tests: panva's OpenID-certified
// oidc-provider on 127.0.0.1, grants kept in memory.
//
//   node interop/server.mjs [port]        (port 0, the default, picks a free one)
//
// Prints one JSON line to stdout once listening:
//   {"issuer":"http://127.0.0.1:PORT","port":PORT,"client_id":"...","pid":PID}
// Everything else (oidc-provider's warnings, request errors) goes to stderr.
//
// Environment (all optional):
//   INTEROP_PORT                      port, when not given as the first argument
//   INTEROP_CLIENT_ID / _SECRET       the confidential client (default tokend-interop / interop-secret-…)
//   INTEROP_ACCESS_TOKEN_TTL          access token lifetime, seconds (default 10)
//   INTEROP_CLIENT_CREDENTIALS_TTL    client-credentials token lifetime, seconds (default 10)
//   INTEROP_REDIRECT_URIS             space-separated redirect URIs
//                                     (default http://127.0.0.1/oauth/callback: a native client, so any
//                                     loopback port matches, RFC 8252 §7.3)
//   INTEROP_EXIT_ON_STDIN_EOF=1       exit when stdin closes (the test harness sets it)
//
// Test-only admin routes (no authentication: loopback test fixture only):
//   GET  /_interop/stats          counters of token endpoint outcomes, as JSON
//   POST /_interop/revoke-grants  revokes every grant and its tokens behind the client's back

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider from 'oidc-provider';

const env = process.env;
const port = Number(process.argv[2] ?? env.INTEROP_PORT ?? 0);
const clientId = env.INTEROP_CLIENT_ID || 'tokend-interop';
const clientSecret = env.INTEROP_CLIENT_SECRET || 'interop-secret-0123456789abcdef';
const accessTokenTtl = Number(env.INTEROP_ACCESS_TOKEN_TTL || 10);
const clientCredentialsTtl = Number(env.INTEROP_CLIENT_CREDENTIALS_TTL || 10);
const redirectUris = (env.INTEROP_REDIRECT_URIS || 'http://127.0.0.1/oauth/callback').split(/\s+/).filter(Boolean);

if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`interop: bad port ${process.argv[2] ?? env.INTEROP_PORT}`);
  process.exit(2);
}

// What the test asserts on besides introspection.
const stats = {
  // Successful token endpoint calls, by grant type.
  granted: {},
  // Failed token endpoint calls, by grant type and error ("refresh_token:invalid_grant").
  errors: {},
  // Why each failed token endpoint call failed, in order (e.g. "refresh token already used").
  error_details: [],
  // Refresh tokens presented twice: oidc-provider then revokes the whole grant.
  refresh_token_reuse: 0,
  // Grants revoked (by reuse detection, the revocation endpoint or /_interop/revoke-grants).
  grants_revoked: 0,
  // Revocation endpoint calls that succeeded.
  revocations: 0,
};
const grantIds = new Set();

function requestListener() {
  // Created lazily: the issuer needs the port, known only once listening.
  let handler;
  return {
    set(provider) {
      handler = provider.callback();
    },
    async handle(req, res) {
      if (!handler) {
        res.writeHead(503, { 'retry-after': '1' });
        return res.end();
      }
      if (req.url.startsWith('/_interop/')) {
        return admin(req, res);
      }
      return handler(req, res);
    },
  };
}

let provider;

async function admin(req, res) {
  const send = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
    res.end(JSON.stringify(body));
  };
  if (req.method === 'GET' && req.url === '/_interop/stats') {
    return send(200, { ...stats, live_grants: grantIds.size });
  }
  if (req.method === 'POST' && req.url === '/_interop/revoke-grants') {
    const ids = [...grantIds];
    for (const id of ids) {
      await Promise.all([
        provider.AccessToken.revokeByGrantId(id),
        provider.RefreshToken.revokeByGrantId(id),
        provider.AuthorizationCode.revokeByGrantId(id),
        provider.Grant.adapter.destroy(id),
      ]);
      grantIds.delete(id);
      stats.grants_revoked += 1;
    }
    return send(200, { revoked: ids.length });
  }
  return send(404, { error: 'not_found' });
}

const listener = requestListener();
const server = http.createServer((req, res) => {
  listener.handle(req, res).catch((err) => {
    console.error('interop: request failed', err);
    if (!res.headersSent) {
      res.writeHead(500);
    }
    res.end();
  });
});

server.listen(port, '127.0.0.1', () => {
  const actualPort = server.address().port;
  const issuer = `http://127.0.0.1:${actualPort}`;
  // A fresh signing key per run: nothing to keep secret between runs.
  const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = { ...privateKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig', kid: 'interop' };

  provider = new Provider(issuer, {
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        // A native client may use http loopback redirect URIs with any port (RFC 8252 §7.3),
        // which is what tokend's callback is; a web client would need the exact port.
        application_type: 'native',
        token_endpoint_auth_method: 'client_secret_basic',
        id_token_signed_response_alg: 'ES256',
        grant_types: [
          'authorization_code',
          'refresh_token',
          'client_credentials',
          'urn:ietf:params:oauth:grant-type:device_code',
        ],
        response_types: ['code'],
        redirect_uris: redirectUris,
        scope: 'openid offline_access email api:read',
      },
    ],
    jwks: { keys: [jwk] },
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    scopes: ['openid', 'offline_access', 'email', 'api:read'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'] },
    async findAccount(_ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          return { sub, email: `${sub}@interop.test`, email_verified: true };
        },
      };
    },
    features: {
      devInteractions: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
      clientCredentials: { enabled: true },
      deviceFlow: { enabled: true },
      // Off: access tokens without a resource are opaque and introspectable.
      resourceIndicators: { enabled: false },
    },
    // tokend always sends S256; refuse anything without PKCE.
    pkce: { required: () => true },
    // Refresh tokens for every authorization_code grant of a client allowed to refresh (by
    // default oidc-provider wants offline_access plus prompt=consent), not tied to the session.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    expiresWithSession: async () => false,
    // Rotation on every refresh; a reused refresh token revokes the whole grant.
    rotateRefreshToken: () => true,
    ttl: {
      AccessToken: accessTokenTtl,
      ClientCredentials: clientCredentialsTtl,
      AuthorizationCode: 60,
      IdToken: 3600,
      RefreshToken: 24 * 3600,
      Interaction: 600,
      Session: 24 * 3600,
      Grant: 24 * 3600,
      DeviceCode: 600,
    },
  });

  provider.on('grant.saved', (grant) => grantIds.add(grant.jti));
  provider.on('grant.revoked', (_ctx, grantId) => {
    if (grantIds.delete(grantId)) {
      stats.grants_revoked += 1;
    }
  });
  provider.on('grant.success', (ctx) => {
    const type = ctx.oidc.params.grant_type;
    stats.granted[type] = (stats.granted[type] || 0) + 1;
  });
  provider.on('grant.error', (ctx, err) => {
    const type = ctx.oidc.params?.grant_type;
    const key = `${type}:${err.error}`;
    stats.errors[key] = (stats.errors[key] || 0) + 1;
    // error_detail is the precise reason; the reply's error_description is generic.
    const detail = err.error_detail || err.error_description;
    stats.error_details.push(detail);
    if (detail === 'refresh token already used') {
      stats.refresh_token_reuse += 1;
    }
  });
  // oidc-provider emits no event for a successful revocation: count it on the way out.
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.method === 'POST' && ctx.path === '/token/revocation' && ctx.status === 200) {
      stats.revocations += 1;
    }
  });
  provider.on('server_error', (_ctx, err) => console.error('interop: server_error', err));

  listener.set(provider);
  process.stdout.write(`${JSON.stringify({ issuer, port: actualPort, client_id: clientId, pid: process.pid })}\n`);
});

server.on('error', (err) => {
  console.error(`interop: cannot listen on 127.0.0.1:${port}: ${err.message}`);
  process.exit(1);
});

// The test runner kills us with SIGTERM; with INTEROP_EXIT_ON_STDIN_EOF=1 we also exit when our
// stdin closes, so a test process that dies without cleaning up leaves no server behind.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
if (env.INTEROP_EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}
