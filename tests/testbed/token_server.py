#!/usr/bin/python3
"""A minimal token server of the Docker registry token protocol, for the
test bed's Bearer-auth registry (up.sh): GET /token?service=S&scope=SCOPE
with the test login as basic auth answers {"token": JWT} granting the
scope's actions; anything else gets 401. The registry verifies the JWT
against the signing key's certificate (rootcertbundle).

    token_server.py ADDR:PORT TLS_CERT TLS_KEY SIGNING_KEY USER PASSWORD
"""
import base64
import hashlib
import http.server
import json
import ssl
import sys
import time
import urllib.parse
import uuid

import jwt
from cryptography.hazmat.primitives import serialization

ISSUER = "shoal-testbed-token"


def libtrust_key_id(public_key):
    """The key id format the registry looks `kid` up by."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i:i + 4] for i in range(0, 48, 4))


def main():
    addr, cert, key, signing_key, user, password = sys.argv[1:7]
    host, port = addr.rsplit(":", 1)
    with open(signing_key, "rb") as f:
        private = serialization.load_pem_private_key(f.read(), password=None)
    kid = libtrust_key_id(private.public_key())
    login = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            url = urllib.parse.urlparse(self.path)
            query = urllib.parse.parse_qs(url.query)
            if url.path != "/token" or self.headers.get("Authorization") != login:
                self.send_response(401)
                self.end_headers()
                return
            access = []
            for scope in query.get("scope", []):
                kind, _, rest = scope.partition(":")
                name, _, actions = rest.rpartition(":")
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
            now = int(time.time())
            claims = {
                "iss": ISSUER, "sub": user, "aud": query.get("service", [""])[0],
                "iat": now, "nbf": now - 10, "exp": now + 300, "jti": str(uuid.uuid4()),
                "access": access,
            }
            token = jwt.encode(claims, private, algorithm="RS256", headers={"kid": kid})
            body = json.dumps({"token": token, "expires_in": 300}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
