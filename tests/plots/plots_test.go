package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"gonum.org/v1/plot/plotter"
)

// results is where make bench keeps the run the docs show.
const results = "../bench/results"

// TestPicturesMatchTheResults: every picture committed beside bench.json is
// what this command draws from it now, byte for byte: a picture cannot
// describe other results than the ones committed, nor survive a change of
// how pictures are drawn without being drawn again (make plots).
func TestPicturesMatchTheResults(t *testing.T) {
	runs, err := filepath.Glob(filepath.Join(results, "*", "bench.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, run := range append([]string{filepath.Join(results, "bench.json")}, runs...) {
		from := filepath.Dir(run)
		written, err := benchPictures(run, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if len(written) == 0 {
			t.Fatalf("%s: no picture drawn", run)
		}
		for _, p := range written {
			name := filepath.Base(p)
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join(from, name))
			if err != nil {
				t.Fatalf("%s is drawn from %s but not committed (make plots PLOTS_DIR=%s): %v", name, run, from, err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from what %s draws now: run make plots PLOTS_DIR=%s", name, run, from)
			}
		}
	}
}

// TestFlameGraphsMatchTheProfiles: every profile committed in
// results/profiles, or in a run's profiles/, has its flame graph beside
// it, as drawn now.
func TestFlameGraphsMatchTheProfiles(t *testing.T) {
	profiles, err := filepath.Glob(filepath.Join(results, "profiles", "*.pprof"))
	if err != nil {
		t.Fatal(err)
	}
	ofRuns, err := filepath.Glob(filepath.Join(results, "*", "profiles", "*.pprof"))
	if err != nil {
		t.Fatal(err)
	}
	profiles = append(profiles, ofRuns...)
	if len(profiles) == 0 {
		t.Fatal("no profile committed")
	}
	for _, in := range profiles {
		svgs, err := drawings(in)
		if err != nil {
			t.Fatal(err)
		}
		for path, got := range svgs {
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%s has no flame graph %s beside it (make plots): %v", in, path, err)
			}
			if got != string(want) {
				t.Errorf("the flame graph %s differs from what it draws now: run make plots", path)
			}
		}
	}
}

// TestDashboardPictureMatchesTheRecording: docs/dashboard/dashboard.png is
// the dashboard of build/install/observability drawn over the recording
// committed beside it, every query evaluated by Prometheus's engine.
func TestDashboardPictureMatchesTheRecording(t *testing.T) {
	out := filepath.Join(t.TempDir(), "dashboard.png")
	err := dashboardPicture("../../build/install/observability/dashboard.json", "../../docs/dashboard/scrapes.txt.gz", out,
		[]string{"east", "west"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("../../docs/dashboard/dashboard.png")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("docs/dashboard/dashboard.png differs from the dashboard drawn over its recording: run make dashboard-picture")
	}
}

func TestExponentOfAPowerLaw(t *testing.T) {
	k, ok := exponent(plotter.XYs{{X: 10, Y: 3}, {X: 100, Y: 30}, {X: 1000, Y: 300}})
	if !ok || k < 0.999 || k > 1.001 {
		t.Fatalf("linear growth: exponent %v, %v", k, ok)
	}
}
