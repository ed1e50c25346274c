"""Fake Edge TPU runtimes: shared libraries compiled here with the system C compiler (``cc``) that export
libedgetpu's delegate plugin API (``tflite_plugin_create_delegate``/``tflite_plugin_destroy_delegate``, as
TFLite's external delegate interface loads it) and fail the way a mismatched or broken libedgetpu does.

Behaviours: ``segfault``, ``abort`` and ``hang`` in create_delegate; ``null`` returns no delegate (and reports
an error, as libedgetpu does without a device); ``bad-prepare`` returns a delegate whose Prepare crashes when
the interpreter applies it to the graph (where an ABI mismatch crashes); ``works`` returns a delegate that
takes no node (the model runs on the CPU); ``unplug`` is ``works`` until the file named by
``$FAKE_LIBEDGETPU_UNPLUG`` appears, and then aborts the process from a thread of its own, as libedgetpu's USB
worker does on a transfer fault (a Coral unplugged or browned out mid-run); when that file says ``once`` it is
removed first (the Coral is back for the next process). Every library appends the options it was given (the
device) to the file named by ``$FAKE_LIBEDGETPU_LOG``, when set.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

BEHAVIOURS = ("segfault", "abort", "hang", "null", "bad-prepare", "works", "unplug")

SOURCE = r"""
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* TfLiteDelegate of tensorflow/lite/core/c/common.h, in its field order; room at the end for the fields
   later TFLite versions append (they must read as NULL). */
typedef struct Delegate {
  void *data_;
  int (*Prepare)(void *context, struct Delegate *delegate);
  void *CopyFromBufferHandle;
  void *CopyToBufferHandle;
  void *FreeBufferHandle;
  int64_t flags;
  void *opaque_delegate_builder;
  void *reserved[8];
} Delegate;

static int prepare_nothing(void *context, Delegate *delegate) { return 0; /* kTfLiteOk, no node taken */ }
static int prepare_crash(void *context, Delegate *delegate) { return *(volatile int *)delegate->data_; }

static void record(char **keys, char **values, size_t count) {
  const char *log = getenv("FAKE_LIBEDGETPU_LOG");
  FILE *file = log ? fopen(log, "a") : NULL;
  if (!file) return;
  for (size_t i = 0; i < count; i++) fprintf(file, "%s=%s ", keys[i], values[i]);
  fprintf(file, "\n");
  fclose(file);
}

static void *usb_worker(void *trigger) {
  for (;;) {
    FILE *file = fopen((const char *)trigger, "r");
    if (file) {
      char said[8] = {0};
      fread(said, 1, sizeof said - 1, file);
      fclose(file);
      if (strncmp(said, "once", 4) == 0) unlink((const char *)trigger);
      fprintf(stderr, "F driver/usb/usb_driver.cc:1148] HandleQueuedBulkIn transfer in failed. "
                      "Not found: USB transfer error 5 [LibUsbDataInCallback]\n");
      abort();
    }
    usleep(2000);
  }
  return NULL;
}

Delegate *tflite_plugin_create_delegate(char **keys, char **values, size_t count, void (*report)(const char *)) {
  record(keys, values, count);
#if defined(FAKE_SEGFAULT)
  return (Delegate *)(intptr_t)*(volatile int *)0;
#elif defined(FAKE_ABORT)
  abort();
#elif defined(FAKE_HANG)
  for (;;) pause();
#elif defined(FAKE_NULL)
  report("Failed to open device: no Edge TPU found (fake libedgetpu)");
  return NULL;
#else
  Delegate *delegate = calloc(1, sizeof(Delegate));
#if defined(FAKE_BAD_PREPARE)
  delegate->Prepare = prepare_crash;  /* data_ is NULL: Prepare dereferences it */
#elif defined(FAKE_UNPLUG)
  delegate->Prepare = prepare_nothing;
  const char *trigger = getenv("FAKE_LIBEDGETPU_UNPLUG");
  pthread_t worker;
  if (trigger && pthread_create(&worker, NULL, usb_worker, strdup(trigger)) == 0) pthread_detach(worker);
#else
  delegate->Prepare = prepare_nothing;
#endif
  return delegate;
#endif
}

void tflite_plugin_destroy_delegate(Delegate *delegate) { free(delegate); }
"""


def build_fake_libedgetpu(folder: Path, behaviour: str) -> Path:
    """Compile the fake library of ``behaviour`` into ``folder`` and return its path."""
    assert behaviour in BEHAVIOURS, behaviour
    compiler = shutil.which("cc")
    assert compiler, "the fake libedgetpu needs the system C compiler (cc)"
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "fake_libedgetpu.c"
    source.write_text(SOURCE)
    target = folder / f"libedgetpu-{behaviour}.so.1"
    macro = "FAKE_" + behaviour.upper().replace("-", "_")
    subprocess.run([compiler, "-shared", "-fPIC", "-pthread", "-O0", f"-D{macro}", "-o", str(target), str(source)],
                   check=True, capture_output=True, timeout=60)
    return target
