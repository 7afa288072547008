// A real, certified OpenID provider (panva's oidc-provider) on 127.0.0.1, for authfsm's login and
// interop tests. Test-only: development keys, a development cookie key, devInteractions (no
// passwords checked), an in-memory adapter (a restart wipes every grant).
//
//   node provider.mjs --modules DIR [--port 0] [--access-token-ttl 60] [--watch-stdin]
//
// DIR is the node_modules folder .ci/oidc-deps installed (ESM ignores NODE_PATH, so the package
// is imported by path). Port 0 lets the OS choose. stdout is a line protocol and nothing else:
//
//   ready <port>       once listening; the issuer is http://127.0.0.1:<port>
//   revoked <grantId>  every grant.revoked event (a consumed refresh token replayed, a revocation)
//   grant ok|error <grant_type>  every token request's outcome (grant.success / grant.error)
//
// Everything else (the library's notices and warnings, errors) goes to stderr. With
// --watch-stdin the provider exits when its stdin closes, so a parent that dies without stopping
// it leaves no orphan behind.

import { once } from 'node:events';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

// The library prints its NOTICE lines with console.info (stdout); keep stdout for the protocol.
console.info = console.error; // eslint-disable-line no-console

const { values: options } = parseArgs({
  options: {
    modules: { type: 'string', default: process.env.AUTHFSM_OIDC_MODULES },
    port: { type: 'string', default: process.env.AUTHFSM_OIDC_PORT ?? '0' },
    'access-token-ttl': {
      type: 'string', default: process.env.AUTHFSM_OIDC_ACCESS_TOKEN_TTL ?? '60',
    },
    'watch-stdin': { type: 'boolean', default: false },
  },
});

function fail(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(2);
}

function seconds(name, text, minimum) {
  const value = Number(text);
  if (!Number.isInteger(value) || value < minimum) fail(`--${name} must be an integer >= ${minimum}`);
  return value;
}

if (!options.modules) fail('--modules (or AUTHFSM_OIDC_MODULES) must name the installed node_modules');
const port = seconds('port', options.port, 0);
const accessTokenTtl = seconds('access-token-ttl', options['access-token-ttl'], 1);

const entry = createRequire(join(options.modules, '..', 'package.json')).resolve('oidc-provider');
const { default: Provider, errors } = await import(pathToFileURL(entry).href);

const DEVICE_CODE = 'urn:ietf:params:oauth:grant-type:device_code';

// Listen first: with port 0 the issuer (which must name the port) is known only once bound.
const server = createServer();
server.listen(port, '127.0.0.1');
await once(server, 'listening');
const bound = server.address().port;
const issuer = `http://127.0.0.1:${bound}`;

const provider = new Provider(issuer, {
  clients: [
    {
      // A CLI: public, native, any loopback port (RFC 8252 §7.3), device flow.
      client_id: 'cli-public',
      token_endpoint_auth_method: 'none',
      application_type: 'native',
      redirect_uris: ['http://127.0.0.1/callback'],
      grant_types: ['authorization_code', 'refresh_token', DEVICE_CODE],
      response_types: ['code'],
    },
    {
      // A confidential service; the tests also introspect any token with it.
      client_id: 'svc',
      client_secret: 'svc-secret',
      redirect_uris: ['http://127.0.0.1:8765/cb'],
      grant_types: ['authorization_code', 'refresh_token', DEVICE_CODE],
      response_types: ['code'],
    },
  ],
  features: {
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    devInteractions: { enabled: true },
  },
  // Always rotate, for confidential clients too; a consumed refresh token presented again is
  // invalid_grant and revokes the whole grant (lib/actions/grants/refresh_token.js).
  rotateRefreshToken: true,
  issueRefreshToken: async (ctx, client, code) => client.grantTypeAllowed('refresh_token')
    && code.scopes.has('offline_access'),
  ttl: {
    AccessToken: accessTokenTtl,
    AuthorizationCode: 60,
    RefreshToken: 86400,
    DeviceCode: 600,
    Interaction: 600,
    Session: 86400,
    Grant: 86400,
    IdToken: 3600,
  },
  pkce: { required: () => true }, // S256 only: the default methods in 8.x, the only one in 9.x
  cookies: { keys: ['authfsm-test-only-cookie-key'] },
  findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
});

provider.on('grant.revoked', (ctx, grantId) => process.stdout.write(`revoked ${grantId}\n`));
// Every token request, by grant type and outcome, so tests can count refresh calls.
provider.on('grant.success', (ctx) => process.stdout.write(`grant ok ${ctx.oidc.params.grant_type}\n`));
provider.on('grant.error', (ctx) => process.stdout.write(`grant error ${ctx.oidc.params?.grant_type ?? '-'}\n`));
provider.on('server_error', (ctx, error) => console.error('server_error', error)); // eslint-disable-line no-console
provider.on('grant.error', (ctx, error) => {
  if (!(error instanceof errors.OIDCProviderError)) console.error('grant.error', error); // eslint-disable-line no-console
});

server.on('request', provider.callback());

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
if (options['watch-stdin']) {
  process.stdin.on('end', stop).on('error', stop).resume();
}

process.stdout.write(`ready ${bound}\n`);
