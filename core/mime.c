/*
 * mime.c: Content-Type by file extension. Three sources, in order: a mount's
 * overrides ("ext=type,ext=type", pymongoose's form), the built-in table
 * below (the types browsers need to get right: scripts, styles, fonts, wasm,
 * images), then /etc/mime.types when the system has one (read once per
 * process, on first use). Text types are labelled UTF-8.
 */
#include "static.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct mime_entry {
  const char *ext; /* lower case, without the dot */
  const char *type;
} mime_entry_t;

/* Sorted by ext (bsearch). */
static const mime_entry_t builtin[] = {
    {"7z", "application/x-7z-compressed"},
    {"aac", "audio/aac"},
    {"apng", "image/apng"},
    {"avif", "image/avif"},
    {"bin", "application/octet-stream"},
    {"bmp", "image/bmp"},
    {"bz2", "application/x-bzip2"},
    {"c", "text/plain"},
    {"cjs", "text/javascript"},
    {"css", "text/css"},
    {"csv", "text/csv"},
    {"doc", "application/msword"},
    {"eot", "application/vnd.ms-fontobject"},
    {"epub", "application/epub+zip"},
    {"flac", "audio/flac"},
    {"gif", "image/gif"},
    {"gz", "application/gzip"},
    {"h", "text/plain"},
    {"htm", "text/html"},
    {"html", "text/html"},
    {"ico", "image/vnd.microsoft.icon"},
    {"ics", "text/calendar"},
    {"jar", "application/java-archive"},
    {"jpeg", "image/jpeg"},
    {"jpg", "image/jpeg"},
    {"js", "text/javascript"},
    {"json", "application/json"},
    {"jsonld", "application/ld+json"},
    {"map", "application/json"},
    {"md", "text/markdown"},
    {"mjs", "text/javascript"},
    {"mp3", "audio/mpeg"},
    {"mp4", "video/mp4"},
    {"mpeg", "video/mpeg"},
    {"oga", "audio/ogg"},
    {"ogg", "audio/ogg"},
    {"ogv", "video/ogg"},
    {"opus", "audio/opus"},
    {"otf", "font/otf"},
    {"pdf", "application/pdf"},
    {"png", "image/png"},
    {"py", "text/x-python"},
    {"rss", "application/rss+xml"},
    {"rtf", "application/rtf"},
    {"svg", "image/svg+xml"},
    {"tar", "application/x-tar"},
    {"tif", "image/tiff"},
    {"tiff", "image/tiff"},
    {"toml", "application/toml"},
    {"ts", "video/mp2t"},
    {"ttf", "font/ttf"},
    {"txt", "text/plain"},
    {"wasm", "application/wasm"},
    {"wav", "audio/wav"},
    {"weba", "audio/webm"},
    {"webm", "video/webm"},
    {"webmanifest", "application/manifest+json"},
    {"webp", "image/webp"},
    {"woff", "font/woff"},
    {"woff2", "font/woff2"},
    {"xhtml", "application/xhtml+xml"},
    {"xml", "application/xml"},
    {"yaml", "application/yaml"},
    {"yml", "application/yaml"},
    {"zip", "application/zip"},
    {"zst", "application/zstd"},
};

static int entry_cmp(const void *key, const void *elem) {
  return strcmp((const char *)key, ((const mime_entry_t *)elem)->ext);
}

/* /etc/mime.types, sorted by ext; strings in one block. */
static mime_entry_t *sys_entries;
static size_t sys_count;
static char *sys_text;
static pthread_once_t sys_once = PTHREAD_ONCE_INIT;

static int sys_cmp(const void *a, const void *b) {
  return strcmp(((const mime_entry_t *)a)->ext, ((const mime_entry_t *)b)->ext);
}

/* Read "type ext ext ..." lines; '#' starts a comment. On any failure the
 * table stays empty: the built-in one still answers. */
static void sys_load(void) {
  const char *path = getenv("PMU_MIME_TYPES");
  FILE *f = fopen(path && path[0] ? path : "/etc/mime.types", "re");
  if (!f)
    return;
  size_t cap = 0, len = 0;
  char *text = NULL;
  char chunk[4096];
  size_t got;
  while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (len + got + 1 > cap) {
      size_t ncap = cap ? cap * 2 : 65536;
      while (ncap < len + got + 1)
        ncap *= 2;
      char *t = realloc(text, ncap);
      if (!t || ncap > (8u << 20)) {
        free(t ? t : text);
        fclose(f);
        return;
      }
      text = t;
      cap = ncap;
    }
    memcpy(text + len, chunk, got);
    len += got;
  }
  fclose(f);
  if (!text)
    return;
  text[len] = '\0';
  size_t ecap = 1024, n = 0;
  mime_entry_t *e = malloc(ecap * sizeof *e);
  if (!e) {
    free(text);
    return;
  }
  char *save = NULL;
  for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char *hash = strchr(line, '#');
    if (hash)
      *hash = '\0';
    char *save2 = NULL;
    char *type = strtok_r(line, " \t\r", &save2);
    if (!type || !strchr(type, '/'))
      continue;
    for (char *ext; (ext = strtok_r(NULL, " \t\r", &save2));) {
      for (char *c = ext; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
          *c = (char)(*c - 'A' + 'a');
      if (n == ecap) {
        mime_entry_t *t = realloc(e, 2 * ecap * sizeof *e);
        if (!t)
          break;
        e = t;
        ecap *= 2;
      }
      e[n].ext = ext;
      e[n].type = type;
      n++;
    }
  }
  qsort(e, n, sizeof *e, sys_cmp);
  sys_entries = e;
  sys_count = n;
  sys_text = text;
}

/* A text type, labelled UTF-8: text/..., and the structured text formats. */
static int is_text(const char *type) {
  if (strncmp(type, "text/", 5) == 0)
    return 1;
  static const char *const more[] = {
      "application/json",    "application/ld+json",   "application/manifest+json",
      "application/xml",     "application/xhtml+xml", "image/svg+xml",
      "application/rss+xml", "application/yaml",      "application/toml"};
  for (size_t i = 0; i < sizeof more / sizeof more[0]; i++)
    if (strcmp(type, more[i]) == 0)
      return 1;
  return 0;
}

/* The override for ext in "ext=type,.ext=type" (a leading dot allowed), copied
 * into buf; NULL when none. */
static const char *override_for(const char *ext, size_t ext_len, const char *list, char *buf,
                                size_t cap) {
  const char *p = list;
  while (p && *p) {
    const char *item = p;
    const char *comma = strchr(p, ',');
    const char *stop = comma ? comma : p + strlen(p);
    p = comma ? comma + 1 : NULL;
    while (item < stop && (*item == ' ' || *item == '.'))
      item++;
    const char *eq = memchr(item, '=', (size_t)(stop - item));
    if (!eq)
      continue;
    const char *kend = eq;
    while (kend > item && kend[-1] == ' ')
      kend--;
    if ((size_t)(kend - item) != ext_len || strncasecmp(item, ext, ext_len) != 0)
      continue;
    const char *v = eq + 1;
    while (v < stop && *v == ' ')
      v++;
    const char *vend = stop;
    while (vend > v && vend[-1] == ' ')
      vend--;
    size_t vlen = (size_t)(vend - v);
    if (!vlen || vlen >= cap)
      continue;
    memcpy(buf, v, vlen);
    buf[vlen] = '\0';
    return buf;
  }
  return NULL;
}

const char *pmu__mime_type(const char *name, size_t name_len, const char *overrides, char *buf,
                           size_t cap) {
  const char *base = name;
  for (size_t i = 0; i < name_len; i++)
    if (name[i] == '/')
      base = name + i + 1;
  size_t base_len = name_len - (size_t)(base - name);
  const char *dot = NULL;
  for (size_t i = 0; i < base_len; i++)
    if (base[i] == '.')
      dot = base + i;
  const char *type = NULL;
  if (dot && dot + 1 < base + base_len) {
    const char *ext = dot + 1;
    size_t ext_len = base_len - (size_t)(ext - base);
    if (overrides) {
      const char *o = override_for(ext, ext_len, overrides, buf, cap);
      if (o)
        return o; /* as the mount gave it, parameters and all */
    }
    char key[32];
    if (ext_len < sizeof key) {
      for (size_t i = 0; i < ext_len; i++)
        key[i] = (char)(ext[i] >= 'A' && ext[i] <= 'Z' ? ext[i] - 'A' + 'a' : ext[i]);
      key[ext_len] = '\0';
      const mime_entry_t *e =
          bsearch(key, builtin, sizeof builtin / sizeof builtin[0], sizeof builtin[0], entry_cmp);
      if (!e) {
        pthread_once(&sys_once, sys_load);
        if (sys_count)
          e = bsearch(key, sys_entries, sys_count, sizeof *sys_entries, entry_cmp);
      }
      if (e)
        type = e->type;
    }
  }
  if (!type)
    return "application/octet-stream";
  if (is_text(type) && strlen(type) + 15 < cap) {
    snprintf(buf, cap, "%s; charset=utf-8", type);
    return buf;
  }
  return type;
}
