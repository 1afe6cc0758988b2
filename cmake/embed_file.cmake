file(READ ${IN} content HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${content}")
file(WRITE ${OUT} "// generated from ${IN}\nnamespace sy::embedded {\nstatic const char data_[] = {${bytes} 0x00};\nextern const char* const ${SYMBOL};\nconst char* const ${SYMBOL} = data_;\n}\n")
