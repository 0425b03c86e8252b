"""Interop driver: PyJWT, an independent JWT implementation.

mint ISS AUD   -> prints {"jwks": {...}, "tokens": {"RS256": .., "ES256": .., "EdDSA": ..}}
                  with keys generated here by `cryptography`.
verify ISS AUD -> reads {"pem": .., "alg": .., "token": ..} on stdin, validates
                  with PyJWT and prints the claims.
"""
import json
import sys
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def mint(iss, aud):
    now = int(time.time())
    claims = {"aud": [aud], "iss": iss, "iat": now, "nbf": now, "exp": now + 600,
              "email": "py@example.com", "sub": "py-1", "type": "app", "country": "DE"}
    keys = {
        "RS256": (rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm),
        "ES256": (ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
        "EdDSA": (ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm),
    }
    jwks, tokens = [], {}
    for alg, (private, algo) in keys.items():
        jwk = json.loads(algo.to_jwk(private.public_key()))
        jwk.update({"kid": "py-" + alg, "alg": alg, "use": "sig"})
        jwks.append(jwk)
        tokens[alg] = jwt.encode(claims, private, algorithm=alg, headers={"kid": "py-" + alg})
    print(json.dumps({"jwks": {"keys": jwks}, "tokens": tokens}))


def verify(iss, aud):
    req = json.load(sys.stdin)
    claims = jwt.decode(req["token"], req["pem"], algorithms=[req["alg"]], audience=aud, issuer=iss,
                        options={"require": ["exp", "iss", "aud"]})
    print(json.dumps(claims))


if __name__ == "__main__":
    {"mint": mint, "verify": verify}[sys.argv[1]](sys.argv[2], sys.argv[3])
