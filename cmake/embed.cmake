# Turns a text file into a C++ header holding it as one string constant:
#   cmake -DIN=file -DOUT=header -DNAME=kConstant -P embed.cmake
# (the console page is served from the binary, no file beside it).
file(READ "${IN}" content)
string(FIND "${content}" ")KEELEMBED\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${IN} contains the raw-string delimiter )KEELEMBED\"")
endif()
file(WRITE "${OUT}" "// Generated from ${IN} by cmake/embed.cmake: do not edit.\n#pragma once\ninline constexpr char ${NAME}[] = R\"KEELEMBED(${content})KEELEMBED\";\n")
