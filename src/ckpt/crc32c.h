// CRC-32C (Castagnoli), the checksum stored with every checkpoint dataset.
// Hardware instruction where the CPU has one (SSE4.2), table otherwise;
// both give the same value (standard check: crc32c("123456789") = 0xE3069283).
#pragma once

#include <cstddef>
#include <cstdint>

namespace sy {

uint32_t crc32c(const void* data, size_t bytes, uint32_t crc = 0);

}  // namespace sy
