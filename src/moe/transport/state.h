// A transport's view of the states it made (make_layer / make_scratch): a
// state handed to another transport's dispatcher is a programming error.
#pragma once

#include "core/check.h"

namespace sy {

template <class T, class Base>
T& state_as(Base& s, const char* transport) {
  T* t = dynamic_cast<T*>(&s);
  SY_CHECK(t != nullptr, "a MoE dispatch state made by another transport was handed to the {} transport", transport);
  return *t;
}

}  // namespace sy
