//! A test issuer of JWTs: a signing key, its JWKS, and tokens with the claims a test asks for.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair};
use serde_json::{Value, json};

/// A fixed 2048-bit RSA key (PKCS#1 DER) and its public JWK: ring generates no RSA keys.
const RSA_DER: &[u8] = include_bytes!("../../testdata/jwt-test-rsa.der");
const RSA_JWK: &str = include_str!("../../testdata/jwt-test-rsa.pub.json");

/// Signs tokens for one issuer with one key.
pub struct TestIssuer {
    pub issuer: String,
    pub kid: String,
    pub alg: Algorithm,
    key: EncodingKey,
    /// The public key as a JWK (with `kid` and `alg`).
    jwk: Value,
}

impl std::fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl TestIssuer {
    fn new(issuer: &str, kid: &str, alg: Algorithm, key: EncodingKey, mut jwk: Value) -> Self {
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!(format!("{alg:?}"));
        TestIssuer {
            issuer: issuer.to_owned(),
            kid: kid.to_owned(),
            alg,
            key,
            jwk,
        }
    }

    /// A fresh P-256 key, ES256.
    pub fn es256(issuer: &str, kid: &str) -> Self {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generate P-256");
        let pair = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("P-256");
        // Uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        let key = EncodingKey::from_ec_der(pkcs8.as_ref());
        Self::new(issuer, kid, Algorithm::ES256, key, jwk)
    }

    /// A fresh Ed25519 key, EdDSA.
    pub fn ed25519(issuer: &str, kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("generate Ed25519");
        let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519");
        let jwk = json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        });
        let key = EncodingKey::from_ed_der(pkcs8.as_ref());
        Self::new(issuer, kid, Algorithm::EdDSA, key, jwk)
    }

    /// The fixed RSA key with `alg` (RS256 or PS256, ...).
    pub fn rsa(issuer: &str, kid: &str, alg: Algorithm) -> Self {
        let jwk = serde_json::from_str(RSA_JWK).expect("RSA JWK");
        Self::new(issuer, kid, alg, EncodingKey::from_rsa_der(RSA_DER), jwk)
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// A JWKS holding this issuer's key.
    pub fn jwks(&self) -> String {
        json!({ "keys": [self.jwk] }).to_string()
    }

    /// A token with `claims`, `iss` added unless the claims set it.
    pub fn token(&self, claims: Value) -> String {
        let mut claims = claims;
        if claims.get("iss").is_none() {
            claims["iss"] = json!(self.issuer);
        }
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign a test token")
    }
}
