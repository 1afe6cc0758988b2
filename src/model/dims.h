// Dims lives in config/dims.h (the memory estimate sizes activations with it
// without the model); this header keeps the model's includes as they are.
#pragma once

#include "config/dims.h"
