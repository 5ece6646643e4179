package harness

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// ServedView is what a /debug/consulz answer says istiod serves: one
// "name vip [routed instances]" line per service that keep selects (nil:
// every one), sorted. Two istiods serving the same truth give the same view.
func ServedView(consulz []byte, keep func(name string) bool) (string, error) {
	var z struct {
		Registries []struct {
			Services []struct {
				Name      string `json:"name"`
				VIP       string `json:"vip"`
				Instances []struct {
					Address string `json:"address"`
					Port    int    `json:"port"`
					Routed  bool   `json:"routed"`
				} `json:"instances"`
			} `json:"services"`
		} `json:"registries"`
	}
	if err := json.Unmarshal(consulz, &z); err != nil {
		return "", fmt.Errorf("decode /debug/consulz: %w", err)
	}
	var lines []string
	for _, r := range z.Registries {
		for _, s := range r.Services {
			if keep != nil && !keep(s.Name) {
				continue
			}
			var insts []string
			for _, i := range s.Instances {
				if i.Routed {
					insts = append(insts, fmt.Sprintf("%s:%d", i.Address, i.Port))
				}
			}
			sort.Strings(insts)
			lines = append(lines, fmt.Sprintf("%s %s %v", s.Name, s.VIP, insts))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n", nil
}
