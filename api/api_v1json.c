/* api_v1json: the Statuspage Manage API v1 object shapes (reference §2.3 to
 * §2.7) built from the typed views of api/model.h, and the two JSON value
 * helpers every renderer shares (strings with explicit nulls, stored JSON
 * text).
 *
 * Every function returns a new jansson value the caller owns (json_decref)
 * or NULL on out of memory; nothing is kept.  Keys are added in the
 * reference's order (jansson keeps insertion order when dumping).  Fields
 * the service does not model (twitter, branding, css colours, ...) are
 * written with their neutral value (null/false) so clients find every key.
 */
#include "model.h"

#include <string.h>

#include "sp_alloc.h"

/* ---- shared helpers ---- */

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when invalid
 * (overlong forms, surrogates and code points past U+10FFFF are invalid,
 * as jansson judges them). */
static size_t utf8_seq(const unsigned char *p, size_t left) {
  unsigned c = p[0];
  size_t n;
  unsigned cp;
  if (c < 0x80)
    return 1;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
    cp = c & 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    cp = c & 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (left < n)
    return 0;
  for (size_t i = 1; i < n; i++) {
    if ((p[i] & 0xc0) != 0x80)
      return 0;
    cp = (cp << 6) | (p[i] & 0x3f);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
      (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return n;
}

json_t *api_json_str(const char *s) {
  if (s == NULL)
    return json_null();
  json_t *v = json_string(s);
  if (v)
    return v;
  /* json_string fails on invalid UTF-8 as on out of memory: repair and
   * retry; if the text was valid the failure was memory */
  size_t len = strlen(s), i = 0, k = 0;
  int bad = 0;
  char *fixed = sp_malloc(len * 3 + 1);
  if (fixed == NULL)
    return NULL;
  while (i < len) {
    size_t n = utf8_seq((const unsigned char *)s + i, len - i);
    if (n == 0) {
      memcpy(fixed + k, "\xef\xbf\xbd", 3);
      k += 3;
      i++;
      bad = 1;
    } else {
      memcpy(fixed + k, s + i, n);
      k += n;
      i += n;
    }
  }
  fixed[k] = '\0';
  v = bad ? json_stringn(fixed, k) : NULL;
  sp_free(fixed);
  return v;
}

json_t *api_json_parsed(const char *s, json_t *dflt) {
  json_t *v = s ? json_loads(s, JSON_DECODE_ANY, NULL) : NULL;
  return v ? v : json_incref(dflt);
}

/* Adds key -> value (a new reference, may be NULL after a failed
 * allocation); returns nonzero on failure so callers can OR the results. */
static int put(json_t *o, const char *k, json_t *v) { return json_object_set_new(o, k, v) != 0; }

static json_t *jbool(int b) { return json_boolean(b); }

static json_t *done(json_t *o, int bad) {
  if (bad) {
    json_decref(o);
    return NULL;
  }
  return o;
}

/* ---- objects ---- */

json_t *api_json_page_v1(const api_page_v *p) {
  json_t *o = json_object();
  if (o == NULL)
    return NULL;
  int bad = 0;
  bad |= put(o, "id", api_json_str(p->id));
  bad |= put(o, "created_at", api_json_str(p->created_at));
  bad |= put(o, "updated_at", api_json_str(p->updated_at));
  bad |= put(o, "name", api_json_str(p->name));
  bad |= put(o, "page_description", api_json_str(p->page_description));
  bad |= put(o, "headline", api_json_str(p->headline));
  bad |= put(o, "branding", json_string("basic"));
  bad |= put(o, "subdomain", api_json_str(p->subdomain));
  bad |= put(o, "domain", api_json_str(p->domain));
  bad |= put(o, "url", api_json_str(p->url));
  bad |= put(o, "support_url", api_json_str(p->support_url));
  bad |= put(o, "hidden_from_search", jbool(0));
  bad |= put(o, "allow_page_subscribers", jbool(p->allow_page_subscribers));
  bad |= put(o, "allow_incident_subscribers", jbool(p->allow_incident_subscribers));
  bad |= put(o, "allow_email_subscribers", jbool(p->allow_email_subscribers));
  bad |= put(o, "allow_sms_subscribers", jbool(p->allow_sms_subscribers));
  bad |= put(o, "allow_rss_atom_feeds", jbool(p->allow_rss_atom_feeds));
  bad |= put(o, "allow_webhook_subscribers", jbool(p->allow_webhook_subscribers));
  bad |= put(o, "notifications_from_email", json_null());
  bad |= put(o, "notifications_email_footer", json_null());
  bad |= put(o, "activity_score", json_real(0));
  bad |= put(o, "twitter_username", json_null());
  bad |= put(o, "viewers_must_be_team_members", jbool(0));
  bad |= put(o, "ip_restrictions", json_null());
  bad |= put(o, "city", json_null());
  bad |= put(o, "state", json_null());
  bad |= put(o, "country", json_null());
  bad |= put(o, "time_zone", api_json_str(p->time_zone ? p->time_zone : "Etc/UTC"));
  static const char *const unset[] = {
      "css_body_background_color", "css_font_color", "css_light_font_color", "css_greens",
      "css_yellows", "css_oranges", "css_blues", "css_reds", "css_border_color",
      "css_graph_color", "css_link_color", "css_no_data", "favicon_logo", "transactional_logo",
      "hero_cover", "email_logo", "twitter_logo"};
  for (size_t i = 0; i < sizeof unset / sizeof unset[0]; i++)
    bad |= put(o, unset[i], json_null());
  return done(o, bad);
}

json_t *api_json_component_v1(const api_component_v *c) {
  json_t *o = json_object();
  if (o == NULL)
    return NULL;
  int bad = 0;
  bad |= put(o, "id", api_json_str(c->id));
  bad |= put(o, "page_id", api_json_str(c->page_id));
  bad |= put(o, "group_id", api_json_str(c->group_id));
  bad |= put(o, "created_at", api_json_str(c->created_at));
  bad |= put(o, "updated_at", api_json_str(c->updated_at ? c->updated_at : c->created_at));
  bad |= put(o, "group", jbool(c->group));
  bad |= put(o, "name", api_json_str(c->name ? c->name : ""));
  bad |= put(o, "description", api_json_str(c->description));
  bad |= put(o, "position", json_integer(c->position));
  bad |= put(o, "status", api_json_str(c->status));
  bad |= put(o, "showcase", jbool(c->showcase));
  bad |= put(o, "only_show_if_degraded", jbool(c->only_show_if_degraded));
  bad |= put(o, "automation_email", api_json_str(c->automation_email));
  bad |= put(o, "start_date", api_json_str(c->start_date));
  return done(o, bad);
}

static json_t *id_array(const char *const *ids, size_t n) {
  json_t *a = json_array();
  if (a == NULL)
    return NULL;
  int bad = 0;
  for (size_t i = 0; i < n; i++)
    bad |= json_array_append_new(a, api_json_str(ids[i])) != 0;
  return done(a, bad);
}

json_t *api_json_group_v1(const api_component_v *g) {
  json_t *o = json_object();
  if (o == NULL)
    return NULL;
  int bad = 0;
  bad |= put(o, "id", api_json_str(g->id));
  bad |= put(o, "page_id", api_json_str(g->page_id));
  bad |= put(o, "name", api_json_str(g->name ? g->name : ""));
  bad |= put(o, "description", api_json_str(g->description));
  bad |= put(o, "components", id_array(g->children, g->nchildren));
  bad |= put(o, "position", json_integer(g->position));
  bad |= put(o, "created_at", api_json_str(g->created_at));
  bad |= put(o, "updated_at", api_json_str(g->updated_at ? g->updated_at : g->created_at));
  return done(o, bad);
}

json_t *api_json_incident_update(const api_update_v *u) {
  json_t *o = json_object();
  if (o == NULL)
    return NULL;
  int bad = 0;
  bad |= put(o, "id", api_json_str(u->id));
  bad |= put(o, "status", api_json_str(u->status));
  bad |= put(o, "body", api_json_str(u->body ? u->body : ""));
  bad |= put(o, "incident_id", api_json_str(u->incident_id));
  bad |= put(o, "created_at", api_json_str(u->created_at));
  bad |= put(o, "updated_at", api_json_str(u->updated_at ? u->updated_at : u->created_at));
  bad |= put(o, "display_at", api_json_str(u->display_at ? u->display_at : u->created_at));
  json_t *null = json_null();
  bad |= put(o, "affected_components", api_json_parsed(u->affected_components, null));
  bad |= put(o, "deliver_notifications", jbool(u->deliver_notifications));
  bad |= put(o, "custom_tweet", api_json_str(u->custom_tweet));
  bad |= put(o, "tweet_id", api_json_str(u->tweet_id));
  bad |= put(o, "twitter_updated_at", json_null());
  bad |= put(o, "wants_twitter_update", jbool(0));
  return done(o, bad);
}

json_t *api_json_incident_v1(const api_incident_v *x) {
  json_t *o = json_object();
  if (o == NULL)
    return NULL;
  int bad = 0;
  bad |= put(o, "id", api_json_str(x->id));
  bad |= put(o, "name", api_json_str(x->name ? x->name : ""));
  bad |= put(o, "status", api_json_str(x->status));
  bad |= put(o, "impact", api_json_str(api_incident_impact(x)));
  bad |= put(o, "impact_override", api_json_str(x->impact_override));
  bad |= put(o, "created_at", api_json_str(x->created_at));
  bad |= put(o, "updated_at", api_json_str(x->updated_at ? x->updated_at : x->created_at));
  bad |= put(o, "started_at", api_json_str(x->started_at ? x->started_at : x->created_at));
  bad |= put(o, "monitoring_at", api_json_str(x->monitoring_at));
  bad |= put(o, "resolved_at", api_json_str(x->resolved_at));
  bad |= put(o, "shortlink", api_json_str(x->shortlink));
  bad |= put(o, "page_id", api_json_str(x->page_id));
  json_t *comps = json_array();
  for (size_t i = 0; comps && i < x->ncomponents; i++)
    bad |= json_array_append_new(comps, api_json_component_v1(&x->components[i])) != 0;
  bad |= put(o, "components", comps);
  json_t *ups = json_array();
  for (size_t i = 0; ups && i < x->nupdates; i++)
    bad |= json_array_append_new(ups, api_json_incident_update(&x->updates[i])) != 0;
  bad |= put(o, "incident_updates", ups);
  json_t *empty = json_object();
  bad |= empty == NULL;
  bad |= put(o, "metadata", empty ? api_json_parsed(x->metadata, empty) : NULL);
  json_decref(empty);
  bad |= put(o, "postmortem_body", api_json_str(x->postmortem_body));
  bad |= put(o, "postmortem_body_last_updated_at", json_null());
  bad |= put(o, "postmortem_ignored", jbool(0));
  bad |= put(o, "postmortem_notified_subscribers", jbool(0));
  bad |= put(o, "postmortem_notified_twitter", jbool(0));
  bad |= put(o, "postmortem_published_at", api_json_str(x->postmortem_published_at));
  bad |= put(o, "scheduled_for", api_json_str(x->scheduled_for));
  bad |= put(o, "scheduled_until", api_json_str(x->scheduled_until));
  bad |= put(o, "scheduled_remind_prior", jbool(x->scheduled_remind_prior));
  bad |= put(o, "scheduled_reminded_at", api_json_str(x->scheduled_reminded_at));
  bad |= put(o, "scheduled_auto_in_progress", jbool(x->scheduled_auto_in_progress));
  bad |= put(o, "scheduled_auto_completed", jbool(x->scheduled_auto_completed));
  bad |= put(o, "auto_transition_to_maintenance_state",
             jbool(x->auto_transition_to_maintenance_state));
  bad |= put(o, "auto_transition_to_operational_state",
             jbool(x->auto_transition_to_operational_state));
  bad |= put(o, "auto_transition_deliver_notifications_at_start",
             jbool(x->auto_transition_deliver_notifications_at_start));
  bad |= put(o, "auto_transition_deliver_notifications_at_end",
             jbool(x->auto_transition_deliver_notifications_at_end));
  bad |= put(o, "reminder_intervals", api_json_str(x->reminder_intervals));
  return done(o, bad);
}

json_t *api_json_subscriber(const api_subscriber_v *s) {
  json_t *o = json_object();
  if (o == NULL)
    return NULL;
  int bad = 0;
  bad |= put(o, "id", api_json_str(s->id));
  bad |= put(o, "mode", api_json_str(s->mode));
  bad |= put(o, "email", api_json_str(s->email));
  bad |= put(o, "endpoint", api_json_str(s->endpoint));
  bad |= put(o, "phone_number", api_json_str(s->phone_number));
  bad |= put(o, "phone_country", api_json_str(s->phone_country));
  bad |= put(o, "display_phone_number", api_json_str(s->phone_number));
  bad |= put(o, "obfuscated_channel_name", json_null());
  bad |= put(o, "workspace_name", json_null());
  bad |= put(o, "skip_confirmation_notification", jbool(s->skip_confirmation_notification));
  bad |= put(o, "quarantined_at", api_json_str(s->quarantined_at));
  bad |= put(o, "purge_at", api_json_str(s->purge_at));
  /* NULL stored = every component of the page: shown as null */
  json_t *null = json_null();
  bad |= put(o, "components", api_json_parsed(s->components, null));
  bad |= put(o, "page_access_user_id", json_null());
  bad |= put(o, "created_at", api_json_str(s->created_at));
  return done(o, bad);
}
