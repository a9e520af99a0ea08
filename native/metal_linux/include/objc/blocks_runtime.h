// GNUstep's Foundation includes <objc/blocks_runtime.h> when blocks are on (-fblocks); with the gcc
// Objective-C runtime that header lives in libBlocksRuntime as <Block.h>.
#pragma once
#include <Block.h>
