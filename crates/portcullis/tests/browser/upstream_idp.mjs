// An external identity provider for the federation tests: node-oidc-provider (npm
// `oidc-provider`, a certified OpenID Provider) on loopback, with Portcullis registered as a
// confidential client. Its development interactions sign anyone in with any password; the
// login form's name becomes the subject and the claims. Consent is implied for Portcullis (a
// first-party client), so the only page a person meets here is the login form.
//
// Back-channel logout is on: when a person's session here ends (its end-session page), a
// logout token (`sub`, `sid`) is posted to Portcullis's back-channel endpoint.
//
// Portcullis authenticates at the token endpoint with `private_key_jwt`: its client assertions
// are verified with the keys Portcullis publishes at CLIENT_JWKS_URI (its provider's JWKS).
//
// Env: PORT, CLIENT_ID, CLIENT_JWKS_URI, REDIRECT_URI, POST_LOGOUT_REDIRECT_URI,
// BACKCHANNEL_LOGOUT_URI. Prints `ready <issuer>` on stdout when listening.
import { createServer } from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;

function signingKey(kid) {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { ...privateKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig', kid };
}

const provider = new Provider(issuer, {
  clients: [{
    client_id: process.env.CLIENT_ID,
    jwks_uri: process.env.CLIENT_JWKS_URI,
    redirect_uris: [process.env.REDIRECT_URI],
    post_logout_redirect_uris: [process.env.POST_LOGOUT_REDIRECT_URI],
    backchannel_logout_uri: process.env.BACKCHANNEL_LOGOUT_URI,
    backchannel_logout_session_required: true,
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'private_key_jwt',
    id_token_signed_response_alg: 'ES256',
  }],
  jwks: { keys: [signingKey(`upstream-${process.pid}`)] },
  cookies: { keys: ['portcullis-test-upstream-cookie-key'] },
  // Portcullis listens on loopback here, which oidc-provider's guard against requests to
  // special-use addresses refuses (as Portcullis's own does without `outbound_allow`).
  fetch(url, options) {
    const { dispatcher: _guarded, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
  // Portcullis is first-party here: what it asks for is granted without a consent page.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      return ctx.oidc.provider.Grant.find(grantId);
    }
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid profile email');
    await grant.save();
    return grant;
  },
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          name: `Person ${sub}`,
          preferred_username: sub,
          email: `${sub}@corp.example`,
          email_verified: true,
        };
      },
    };
  },
});
provider.on('server_error', (_ctx, err) => console.error('server_error', err));
provider.on('backchannel.error', (_ctx, err, client) => console.error('backchannel.error', client?.clientId, err?.message, err?.cause));
provider.on('backchannel.success', (_ctx, client) => console.log('backchannel.success', client?.clientId));

createServer(provider.callback()).listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
