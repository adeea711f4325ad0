package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spawnd/spawnd/spawnd"
)

// hubActivity reads when each running server was last active from
// JupyterHub's REST API (GET /users?state=active, paginated), as
// jupyterhub-idle-culler does, with a token that can only read that.
type hubActivity struct {
	url, token string
	client     *http.Client
}

// hubUser is what a user model holds that a rollout needs.
type hubUser struct {
	Name         string     `json:"name"`
	LastActivity *time.Time `json:"last_activity"`
	Servers      map[string]struct {
		LastActivity *time.Time `json:"last_activity"`
	} `json:"servers"`
}

// Activity implements spawnd.ActivitySource. A user whose servers the token
// may not read counts with the user's own last activity.
func (h *hubActivity) Activity(ctx context.Context) (map[string]time.Time, error) {
	c := h.client
	if c == nil {
		c = &http.Client{Timeout: 30 * time.Second}
	}
	out := map[string]time.Time{}
	offset := 0
	for page := 0; page < 1000; page++ {
		q := url.Values{"state": {"active"}, "offset": {strconv.Itoa(offset)}, "limit": {"200"}}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(h.url, "/")+"/users?"+q.Encode(), nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "token "+h.token)
		req.Header.Set("Accept", "application/jupyterhub-pagination+json")
		res, err := c.Do(req)
		if err != nil {
			return nil, fmt.Errorf("asking the hub (%s) for activity: %w", h.url, err)
		}
		body, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
		res.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("reading the hub's answer: %w", err)
		}
		if res.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("the hub answered %s for GET /users; does hub.token_file hold a token with list:users, read:users:activity and read:servers?", res.Status)
		}
		var pg struct {
			Items      []hubUser `json:"items"`
			Pagination *struct {
				Next *struct {
					Offset int `json:"offset"`
				} `json:"next"`
			} `json:"_pagination"`
		}
		if err := json.Unmarshal(body, &pg); err != nil {
			return nil, fmt.Errorf("the hub's answer to GET /users is not a page of users: %w", err)
		}
		for _, u := range pg.Items {
			for name, s := range u.Servers {
				switch {
				case s.LastActivity != nil:
					out[spawnd.ActivityKey(u.Name, name)] = *s.LastActivity
				case u.LastActivity != nil:
					out[spawnd.ActivityKey(u.Name, name)] = *u.LastActivity
				}
			}
			if len(u.Servers) == 0 && u.LastActivity != nil {
				out[spawnd.ActivityKey(u.Name, "")] = *u.LastActivity
			}
		}
		if pg.Pagination == nil || pg.Pagination.Next == nil || pg.Pagination.Next.Offset <= offset {
			return out, nil
		}
		offset = pg.Pagination.Next.Offset
	}
	return nil, fmt.Errorf("the hub's user list did not end after 1000 pages")
}
