/* api/form.h: application/x-www-form-urlencoded request bodies with
 * Rails-style keys, turned into the JSON the management API handlers read.
 *
 * Statuspage clients send either JSON or forms such as
 *   incident[name]=DB+down&incident[status]=investigating
 *   &incident[components][8kbf7d35c070]=major_outage
 *   &incident[component_ids][]=8kbf7d35c070&incident[component_ids][]=abc
 * which becomes
 *   {"incident": {"name": "DB down", "status": "investigating",
 *                 "components": {"8kbf7d35c070": "major_outage"},
 *                 "component_ids": ["8kbf7d35c070", "abc"]}}
 *
 * Rules: pairs are split on '&' (empty pairs skipped); '+' is a space and
 * %XX a byte in keys and values; a pair without '=' has the value "".  A key
 * is a name followed by any number of "[sub]" segments (objects) and at most
 * one trailing "[]" (append to an array; an empty value in "x[]=" creates
 * the array without adding to it, so "x[]=" is the empty list).  Leaves are
 * always JSON strings: the handlers convert "true"/"false" and the like.  A
 * repeated scalar key keeps the last value (as Rails does).
 *
 * Errors name the offending key: a stray '%' or %00, bytes that are not
 * UTF-8, an unclosed '[' or text after ']', "[]" that is not last, a key used
 * both as a value and as an object/array ("a=1&a[b]=2"), more than
 * API_FORM_MAX_DEPTH segments or API_FORM_MAX_PAIRS pairs.
 */
#ifndef API_FORM_H
#define API_FORM_H

#include <jansson.h>
#include <stddef.h>

#define API_FORM_MAX_DEPTH 8     /* name + 7 bracket segments */
#define API_FORM_MAX_PAIRS 10000

/* Parses body[0..len) (need not be NUL-terminated).  Returns 0 and *out (a
 * JSON object the caller owns: json_decref; {} for an empty body), or
 * SP_ERR_PARSE with a message in err (may be NULL; e.g. "malformed form
 * key 'a[b': unclosed '['") and the offending key's name in field (may be
 * NULL; at most fieldlen-1 bytes), or SP_ERR_TOOBIG (too many pairs or too
 * deep; message in err), or SP_ERR_NOMEM. */
int api_form_parse(const char *body, size_t len, json_t **out, char *err, size_t errlen,
                   char *field, size_t fieldlen);

#endif
