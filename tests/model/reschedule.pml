/* The reschedule protocol of one rebook, for the SPIN model checker (tests/model/test_model.py).

   Two workers run the reschedule step; a step holds a lease that may be taken over at any
   moment (a paused or stuck worker), and its writes are fenced by the token it wrote into the
   record (`claim`). A POST may be refused, succeed, or be ambiguous; an ambiguous one may have
   committed, commit later, or never; a worker may die at any point. Reconciliation adopts a
   booking it sees, and proves "not made" with PROOF reads, the last only once the window has
   closed: every POST sent has committed or never will (the assumption the README states: the
   window outlasts any commit lag) and nobody is between writing its mark and sending.
   Checked: never two bookings. With -DHOPE (one read, no window) or -DNOFENCE (a stale step's
   writes apply) SPIN must find a violation. */

#define PROOF 2
#ifdef NOFENCE
#define OWN true           /* a stale step's writes apply as well */
#else
#define OWN (claim == me)
#endif

bit mark;          /* "POST sent" */
byte reads;        /* empty reads of the proof so far */
bit booked;        /* WATCHING: a booking is ours */
byte claim;        /* the fencing token: which worker's writes apply */
byte lock;         /* the lease: 0 free */
byte made;         /* bookings the upstream made for this rebook */
byte inflight;     /* POSTs sent whose commit is still undecided */
byte sending;      /* workers between their mark and their send */

inline fenced_adopt() { atomic { if :: OWN -> booked = 1; mark = 0 :: else -> skip fi } }

proctype worker(byte me) {
  bit posting;
  do
  :: booked -> break
  :: else ->
     atomic { lock == 0 -> lock = me; claim = me };
     if
     :: booked -> skip
     :: !booked && !mark ->
        atomic { if :: OWN && !mark -> mark = 1; reads = 0; posting = 1; sending++
                    :: else -> posting = 0 fi };
        if
        :: posting ->
           if
           :: atomic { sending--; made++ }; fenced_adopt()          /* a clear answer */
           :: atomic { sending-- };                                  /* refused: nothing made */
              atomic { if :: OWN -> mark = 0 :: else -> skip fi }
           :: atomic { sending--; made++ }                           /* ambiguous, committed */
           :: atomic { sending-- }                                   /* ambiguous, not made */
           :: atomic { sending--; inflight++ }                       /* ambiguous, commit later */
           :: atomic { sending--; inflight++ }; goto died            /* dies after sending */
           :: atomic { sending-- }; goto died                        /* dies before sending */
           fi
        :: else -> skip
        fi
     :: !booked && mark ->                                          /* reconcile */
        if
        :: made > 0 -> fenced_adopt()
        :: made == 0 && reads + 1 < PROOF ->
           atomic { if :: OWN -> reads++ :: else -> skip fi }
#ifdef HOPE
        :: made == 0 ->
#else
        :: made == 0 && reads + 1 >= PROOF && inflight == 0 && sending == 0 ->
#endif
           atomic { if :: OWN && made == 0 -> mark = 0; reads = 0 :: else -> skip fi }
        :: true -> skip                                              /* the read failed */
        fi
     fi;
     atomic { if :: lock == me -> lock = 0 :: else -> skip fi }
  od;
  goto done;
died:
  skip;
done:
  skip
}

proctype lease_expires() {   /* a step outlives its lease: another may take the rebook */
  do
  :: lock != 0 -> lock = 0
  :: booked -> break
  od
}

proctype upstream() {        /* a late commit lands, or the request is dropped for good */
  do
  :: inflight > 0 -> atomic { inflight--; made++ }
  :: inflight > 0 -> inflight--
  :: booked && inflight == 0 -> break
  od
}

init {
  atomic { run worker(1); run worker(2); run worker(3); run lease_expires(); run upstream() }
}

ltl one_booking { [] (made <= 1) }
