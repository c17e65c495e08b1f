#!/usr/bin/env python3
"""A small token server for registry token auth in tests (RS256 JWTs).

Usage: token_server.py DIR USER PASSWORD ALLOWED_PUSH_REPO
Writes DIR/cert.pem (the registry's rootcertbundle), then serves GET /token on
127.0.0.1 and prints the port on stdout. The user gets pull on every repository
and push only on ALLOWED_PUSH_REPO; anonymous callers get nothing.

POST /token is the OAuth2 form Docker sends with an identity token
(grant_type=refresh_token): the refresh token `identity-PASSWORD` stands for the user;
any other is refused with 401, and so is any other grant type.
"""
import base64, datetime, hashlib, http.server, json, os, sys, time, urllib.parse

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

out_dir, user, password, push_repo = sys.argv[1:5]
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sregistry-test-token")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256()))
with open(os.path.join(out_dir, "cert.pem"), "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))
# The key id the registry derives from the certificate (libtrust fingerprint).
spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo)
b32 = base64.b32encode(hashlib.sha256(spki).digest()[:30]).decode().rstrip("=")
kid = ":".join(b32[i:i + 4] for i in range(0, 48, 4))
pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption())


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def refuse(self):
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        url = urllib.parse.urlparse(self.path)
        if url.path != "/token":
            self.send_error(404)
            return
        n = int(self.headers.get("Content-Length", "0"))
        q = urllib.parse.parse_qs(self.rfile.read(n).decode())
        if (q.get("grant_type") != ["refresh_token"]
                or q.get("refresh_token") != ["identity-" + password]):
            self.refuse()
            return
        self.grant(q, user)

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path != "/token":
            self.send_error(404)
            return
        q = urllib.parse.parse_qs(url.query)
        who = None
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
            if u == user and p == password:
                who = u
            else:
                self.refuse()
                return
        self.grant(q, who)

    def grant(self, q, who):
        access = []
        for scope in q.get("scope", []):
            parts = scope.split(":")
            if len(parts) != 3 or parts[0] != "repository" or who is None:
                continue
            wanted = parts[2].split(",")
            granted = [a for a in wanted if a == "pull" or (a == "push" and parts[1] == push_repo)]
            access.append({"type": "repository", "name": parts[1], "actions": granted})
        t = int(time.time())
        claims = {"iss": "sregistry-test-issuer", "sub": who or "", "aud": q.get("service", [""])[0],
                  "exp": t + 300, "nbf": t - 10, "iat": t, "jti": os.urandom(8).hex(), "access": access}
        token = jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid})
        body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(srv.server_address[1], flush=True)
srv.serve_forever()
