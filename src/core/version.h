#pragma once

namespace sy {

// "0.1.0 (git 1a2b3c4)": the project version and the commit it was built from.
const char* version();

}  // namespace sy
