package deadletter

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nuid"
	"golang.org/x/time/rate"

	"github.com/openfaas/mailbox/internal/queue"
)

// Bulk actions.
const (
	ActionReplay = "replay"
	ActionPurge  = "purge"
)

// Job states.
const (
	JobRunning  = "running"
	JobFinished = "finished"
	// JobStopped: the process stopped before the job ended. Repeating the
	// request takes up what is left: what was done is gone from the
	// dead letters.
	JobStopped = "stopped"
)

// Job is a bulk replay or purge: every dead letter that matched its
// filter when it started, taken oldest first in the background.
type Job struct {
	ID      string `json:"id"`
	Action  string `json:"action"`
	Filter  Filter `json:"-"`
	Retries int    `json:"retries,omitempty"`
	State   string `json:"state"`
	// Matched is how many dead letters matched; Done how many were
	// replayed or purged; Skipped how many were gone by the time the job
	// reached them; Failed how many could not be (Errors says why, for
	// the first few).
	Matched    int       `json:"matched"`
	Done       int       `json:"done"`
	Skipped    int       `json:"skipped"`
	Failed     int       `json:"failed"`
	Errors     []string  `json:"errors,omitempty"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
}

// maxJobErrors bounds Job.Errors; maxJobs the finished jobs remembered.
const (
	maxJobErrors = 10
	maxJobs      = 100
)

type jobs struct {
	mu    sync.Mutex
	byID  map[string]*Job
	order []string
	wg    sync.WaitGroup
}

func newJobs() *jobs { return &jobs{byID: map[string]*Job{}} }

// add keeps job, unless another job is running: then it returns that
// one's id.
func (j *jobs) add(job *Job) (running string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, id := range j.order {
		if j.byID[id].State == JobRunning {
			return id
		}
	}
	j.byID[job.ID] = job
	j.order = append(j.order, job.ID)
	// Only the new job runs: the oldest ones past maxJobs have ended.
	for len(j.order) > maxJobs {
		delete(j.byID, j.order[0])
		j.order = j.order[1:]
	}
	return ""
}

func (j *jobs) update(job *Job, f func(*Job)) {
	j.mu.Lock()
	defer j.mu.Unlock()
	f(job)
}

func (j *jobs) wait() { j.wg.Wait() }

// ErrNotRunning means the store's Run has not started, or has ended: a
// job would have nothing to run in.
var ErrNotRunning = errors.New("deadletter: store is not running")

// ErrBusy means a bulk job is running in this process: two at once could
// replay one dead letter twice (NATS Streaming does not de-duplicate).
var ErrBusy = errors.New("a bulk job is running")

// Start begins a bulk action on every dead letter matching f now and
// returns the job as it starts. A replay goes at ReplayRate; each dead
// letter is replayed with retries attempts made. The job runs until it
// has taken every one, or the store stops.
func (s *Store) Start(ctx context.Context, action string, f Filter, retries int) (Job, error) {
	if action != ActionReplay && action != ActionPurge {
		return Job{}, fmt.Errorf("deadletter: unknown action %q", action)
	}
	select {
	case <-s.running:
	default:
		return Job{}, ErrNotRunning
	}
	s.mu.Lock()
	runCtx := s.runCtx
	s.mu.Unlock()
	if runCtx.Err() != nil {
		return Job{}, ErrNotRunning
	}
	if err := s.sync(ctx); err != nil {
		return Job{}, err
	}
	s.mu.Lock()
	seqs := s.x.matching(f)
	s.mu.Unlock()
	job := &Job{
		ID: nuid.Next(), Action: action, Filter: f, Retries: retries,
		State: JobRunning, Matched: len(seqs), StartedAt: s.o.Now().UTC(),
	}
	if running := s.jobs.add(job); running != "" {
		return Job{}, fmt.Errorf("%w: %s; wait for it to end (GET /deadletters/jobs/%s)", ErrBusy, running, running)
	}
	s.jobs.wg.Go(func() { s.run(runCtx, job, seqs) })
	return s.Job(job.ID)
}

// Job returns the job with id as it is now.
func (s *Store) Job(id string) (Job, error) {
	s.jobs.mu.Lock()
	defer s.jobs.mu.Unlock()
	job, ok := s.jobs.byID[id]
	if !ok {
		return Job{}, fmt.Errorf("no job %s", id)
	}
	c := *job
	c.Errors = slices.Clone(job.Errors)
	return c, nil
}

func (s *Store) run(ctx context.Context, job *Job, seqs []uint64) {
	limit := rate.NewLimiter(rate.Inf, 1)
	if job.Action == ActionReplay {
		limit = rate.NewLimiter(rate.Limit(s.o.ReplayRate), 1)
	}
	s.log.Info("dead letters: bulk job started", "job", job.ID, "action", job.Action, "matched", len(seqs))
	for _, seq := range seqs {
		if limit.Wait(ctx) != nil {
			break
		}
		outcome, err := s.takeWithRetry(ctx, job, seq)
		if ctx.Err() != nil {
			break
		}
		s.jobs.update(job, func(j *Job) {
			switch {
			case err != nil:
				j.Failed++
				if len(j.Errors) < maxJobErrors {
					j.Errors = append(j.Errors, err.Error())
				}
			case outcome:
				j.Done++
			default:
				j.Skipped++
			}
		})
	}
	s.jobs.update(job, func(j *Job) {
		j.State, j.FinishedAt = JobFinished, s.o.Now().UTC()
		if ctx.Err() != nil {
			j.State = JobStopped
		}
	})
	final, _ := s.Job(job.ID)
	s.log.Info("dead letters: bulk job ended", "job", final.ID, "action", final.Action, "state", final.State,
		"matched", final.Matched, "done", final.Done, "skipped", final.Skipped, "failed", final.Failed)
}

// takeWithRetry replays or purges the dead letter at seq, waiting out an
// unreachable broker. It reports false when the dead letter was already
// gone.
func (s *Store) takeWithRetry(ctx context.Context, job *Job, seq uint64) (bool, error) {
	backoff := 100 * time.Millisecond
	for {
		took, err := s.take(ctx, job, seq)
		if !errors.Is(err, queue.ErrUnavailable) {
			return took, err
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (s *Store) take(ctx context.Context, job *Job, seq uint64) (bool, error) {
	s.mu.Lock()
	e, ok := s.x.entries[seq]
	var c Entry
	if ok {
		c = *e
	}
	s.mu.Unlock()
	if !ok {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if job.Action == ActionPurge {
		return true, s.remove(ctx, c, queue.RemovedPurged)
	}
	_, err := s.replay(ctx, c, job.Retries)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}
