// The system's OpenSSL libcrypto, for MD4 alone: NTLM's NT hash is MD4 of the UTF-16LE password,
// and swift-crypto does not export MD4. The low-level MD4() needs no provider (OpenSSL 3's EVP MD4
// lives in the legacy provider; this one does not go through EVP). It is deprecated in OpenSSL 3,
// hence the suppression, which applies to this header only.
#ifndef OUTBOX_CLIBCRYPTO_SHIM_H
#define OUTBOX_CLIBCRYPTO_SHIM_H

#ifndef OPENSSL_SUPPRESS_DEPRECATED
#define OPENSSL_SUPPRESS_DEPRECATED 1
#endif
#include <stddef.h>
#include <openssl/md4.h>

/// MD4 of `length` bytes at `data` into the 16 bytes at `digest`; returns 1 on success, 0 otherwise.
static inline int outbox_md4(const unsigned char *data, size_t length, unsigned char *digest) {
    return MD4(data, length, digest) != NULL ? 1 : 0;
}

#endif
